//! The entry decoder as the fuzz target `envelope` (in `fuzz/`) drives it.
//! Only built with `--cfg fuzzing` (cargo-fuzz sets it): not an API.

use std::collections::HashMap;

/// The size limit decoding is given: a compressed entry declaring more is
/// refused before anything is allocated, so a run under libFuzzer's memory
/// limit catches a decoder that trusts a declared size.
const MAX_BYTES: usize = 1 << 16;

/// Parses `bytes` as a stored entry and, when the header holds, walks its
/// dependencies and decodes its payload as a few shapes of value. Must
/// return for any input, never panic.
pub fn envelope(bytes: &[u8]) {
    let Ok(env) = crate::envelope::parse(bytes) else {
        return;
    };
    let _ = env.deps().count();
    let _ = env.has_deps();
    let _ = env.decode::<serde_json::Value>(MAX_BYTES);
    let _ = env.decode::<String>(MAX_BYTES);
    let _ = env.decode::<Vec<u64>>(MAX_BYTES);
    let _ = env.decode::<HashMap<String, Vec<u8>>>(MAX_BYTES);
    let _ = env.decode::<Option<(u64, String, bool)>>(MAX_BYTES);
}

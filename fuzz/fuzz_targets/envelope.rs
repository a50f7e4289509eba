//! Arbitrary bytes under an aside key: the entry decoder must return (an
//! entry or an error), never panic, and never allocate past its size limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    aside::__fuzz::envelope(bytes);
});

//! Misuse of `#[aside::cached]` fails to compile with a clear message.
//! The expected messages are in `tests/ui/*.stderr`; after changing one on
//! purpose, regenerate them with `TRYBUILD=overwrite cargo test -p aside-macros --test ui`.

#[test]
fn misuse_is_a_compile_error() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}

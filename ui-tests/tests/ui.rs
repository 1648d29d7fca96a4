//! trybuild: every supported form compiles (and runs), every mistake fails with its exact message.

#[test]
fn ui() {
    {
        let cases = trybuild::TestCases::new();
        cases.pass("tests/ui/pass/*.rs");
        cases.compile_fail("tests/ui/fail/*/*.rs");
    } // (the cases run here)

    // A topic naming rule as a build sets it (`.cargo/config.toml`'s `[env]`): read by the
    // macros at compile time. Set after the cases above ran, in this binary's only test.
    std::env::set_var("MILLSTREAM_COMMAND_TOPICS", "everything");
    trybuild::TestCases::new().compile_fail("tests/ui/rule/*.rs");
}

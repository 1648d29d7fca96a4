//! Helpers of the two linking binaries: what the registry holds for the `lib-demo` service.

/// The names of the registered handlers tagged `service = "lib-demo"`, one per line.
pub fn lib_demo_handlers() -> String {
    let mut out = String::new();
    for descriptor in millstream::registry::handlers() {
        if descriptor.info().service == Some("lib-demo") {
            out.push_str(descriptor.info().name);
            out.push('\n');
        }
    }
    out
}

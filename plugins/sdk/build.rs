//! Lets `plugin!("<world>")` find this SDK's own `wit/` from any plugin crate, wherever the
//! SDK came from (a path or git dependency): the macro needs a literal path, so it is
//! written here as an absolute one.

fn main() {
    let manifest = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let wit = manifest.join("../../wit");
    let wit = wit
        .canonicalize()
        .unwrap_or_else(|e| panic!("the SDK's WIT package {}: {e}", wit.display()));
    println!("cargo:rerun-if-changed=build.rs");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it")).join("wit_path.rs");
    let text = format!(
        "/// `plugin!` with this SDK's own `wit/` ({wit}).\n\
         #[doc(hidden)]\n#[macro_export]\nmacro_rules! __plugin_with_sdk_wit {{\n    \
         ($world:tt) => {{ $crate::plugin!($world, {wit:?}); }};\n}}\n",
        wit = wit.display()
    );
    std::fs::write(out, text).expect("write wit_path.rs");
}

//! Host bindings of the `full-plugin` world (every hook). A component may export any
//! non-empty subset of the hooks: [`crate::Plugin`] finds them with each interface's
//! `GuestIndices::new`, which fails for an interface the component does not export.
#![allow(missing_docs, clippy::all)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "full-plugin",
});

//! Host-side bindings for the `braid:agent` world, generated from the one WIT source of
//! truth in `guest-sdk/wit/`. Nothing else in the host names generated types directly
//! except the sandbox.

wasmtime::component::bindgen!({
    world: "agent",
    path: "../guest-sdk/wit",
    // `log` and `config` are answered from memory: they need neither async nor traps.
    exports: { default: async },
});

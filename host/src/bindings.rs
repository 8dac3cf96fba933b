//! Host-side bindings for the `notifyhub:plugin/plugin` world (`wit/plugin.wit`).
//!
//! WASI interfaces are mapped onto wasmtime-wasi's and wasmtime-wasi-http's
//! own bindings, so the linker can serve them from those crates.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "notifyhub:plugin/plugin",
    exports: { default: async },
    with: {
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        "wasi:random": wasmtime_wasi::p2::bindings::random,
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
    },
    require_store_data_send: true,
});

pub use self::exports::notifyhub::plugin::handler;
pub use self::notifyhub::plugin::host::Level;
pub use self::notifyhub::plugin::types as wit;

//! Host-side bindings for the `notifyhub:plugin/full` world (`wit/plugin.wit`):
//! the `plugin` world plus SMTP (`wit/deps/notifyhub-smtp`) and one-call HTTP
//! (`wit/deps/notifyhub-http`). The host links the superset; a plugin that
//! imports neither links as before.
//!
//! WASI interfaces are mapped onto wasmtime-wasi's and wasmtime-wasi-http's
//! own bindings, so the linker can serve them from those crates.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "notifyhub:plugin/full",
    imports: {
        "notifyhub:smtp/client.send": async,
        "notifyhub:http/client.send": async,
    },
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
pub use self::notifyhub::http::client as exchange;
pub use self::notifyhub::plugin::host::Level;
pub use self::notifyhub::plugin::types as wit;
pub use self::notifyhub::smtp::client as smtp;

/// An instance of a plugin of any of the worlds (the exports are the same).
pub type Plugin = Full;
/// A plugin linked and ready to instantiate.
pub type PluginPre<T> = FullPre<T>;

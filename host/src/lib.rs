//! notifyhub: a daemon that delivers notifications through plugins compiled
//! to WebAssembly components.
//!
//! A task travels through these modules, one concept each:
//!
//! | module | what it is for |
//! |---|---|
//! | [`server`] | Unix socket accept loop, line framing, per-connection limits |
//! | [`protocol`] | request/response lines ⇄ typed [`protocol::Request`]s; bounded values; answer views |
//! | [`api`] | what each operation does |
//! | [`backend`] | the one interface the API keeps tasks through: the embedded store or the broker |
//! | [`store`] | accepted tasks, attempts and outcomes; durable in SQLite |
//! | [`broker`] | several hosts sharing tasks through NATS JetStream (instead of the embedded store) |
//! | [`pool`] | workers, routing, scaling, pacing; [`pool::scheduler`] (when a task may run), [`pool::retry`] (the policy), [`pool::lifecycle`] (what happens after an attempt) |
//! | [`plugin`] | a loaded plugin's identity and its checked `describe()` |
//! | [`registry`] | which plugin serves which platform, right now |
//! | [`loader`] / [`manifest`] | reading, compiling and configuring one plugin file |
//! | [`reload`] | loading the plugin directory at start and swapping versions in |
//! | [`reconfigure`] | re-reading the config while running (`reload-config`, SIGHUP) |
//! | [`executor`] | one safe call into a plugin |
//! | [`sandbox`] | engine, linker, limits and HTTP policy that confine plugins |
//! | [`destination`] | named destinations and their secrets |
//! | [`task`] | the vocabulary: tasks, states, outcomes, platform names |
//! | [`metrics`] | Prometheus metrics on a loopback listener |
//! | [`telemetry`] | the log subscriber; attempt spans exported over OTLP |
//! | [`daemon`] | wiring, start-up and shutdown; [`activation`]: a socket systemd passes; [`open_files`]: the limit raised to what the pool needs |
//! | [`config`], [`cli`], [`client`] | the operator's side |
//! | [`check`], [`scaffold`], [`trial`] | `notifyhub check`, `notifyhub new` and `notifyhub try`, for plugin authors |
//! | [`bindings`], [`redact`], [`text`] | the WIT bindings; redaction of targets in output; cutting outside text to a bound |
//! | `allocator` | the process's allocator (mimalloc), declared here so the library can ask it to return memory; [`without_huge_pages`] for `main` |
//!
//! `docs/architecture.md` has the picture.

pub mod activation;
mod allocator;
pub use allocator::without_huge_pages;
pub mod api;
pub mod backend;
pub mod bindings;
pub mod broker;
pub mod check;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod destination;
pub mod executor;
pub mod loader;
pub mod manifest;
pub mod metrics;
pub mod open_files;
pub mod plugin;
pub mod pool;
pub mod protocol;
pub mod reconfigure;
pub mod redact;
pub mod registry;
pub mod reload;
pub mod sandbox;
pub mod scaffold;
pub mod server;
pub mod store;
pub mod task;
pub mod telemetry;
pub mod text;
pub mod time;
pub mod trial;

//! notifyhub: a daemon that delivers notifications through plugins compiled
//! to WebAssembly components.
//!
//! A task travels through these modules, one concept each:
//!
//! | module | what it is for |
//! |---|---|
//! | [`server`] | Unix socket accept loop, line framing, per-connection limits |
//! | [`protocol`] | request/response lines ⇄ typed [`protocol::Request`]s |
//! | [`api`] | what each operation does |
//! | [`store`] | accepted tasks, attempts and outcomes; durable in SQLite |
//! | [`scheduler`] / [`retry`] | when a task may run: `deliver_at`, backoff after a failure |
//! | [`pool`] | workers that take tasks from the queue |
//! | [`registry`] / [`loader`] / [`manifest`] | which plugin serves which platform; loading one file |
//! | [`reload`] | watching the plugin directory and swapping versions in |
//! | [`executor`] | one safe call into a plugin |
//! | [`sandbox`] | engine, linker, limits and HTTP policy that confine plugins |
//! | [`daemon`] | wiring, start-up and shutdown |
//! | [`config`], [`cli`], [`client`] | the operator's side |
//!
//! `docs/architecture.md` has the picture.

pub mod api;
pub mod bindings;
pub mod check;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod destination;
pub mod executor;
pub mod loader;
pub mod manifest;
pub mod pool;
pub mod protocol;
pub mod redact;
pub mod registry;
pub mod reload;
pub mod retry;
pub mod sandbox;
pub mod scaffold;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod task;

//! Switchyard's controller: sources that read the world (a manifest
//! directory; the Kubernetes API), the pure `compile` step, the publisher
//! that makes snapshots live, and the serving modes of the `switchyard`
//! binary.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod cli;
pub mod compile;
pub mod demo;
pub mod leader;
pub mod publish;
pub mod run;
pub mod runtime;
pub mod source;
pub mod standalone;
pub mod status;
pub mod world;

//! The step shared by every source: compile a world, log what was
//! rejected, make the snapshot live, update the control-loop metrics.

use std::collections::BTreeSet;
use std::sync::Arc;

use switchyard_dataplane::SnapshotHandle;
use switchyard_dataplane::health::active::Prober;
use switchyard_dataplane::metrics::Metrics;

use crate::compile::{ClassConfig, Compiled, Diagnostic, compile, count_by_reason};
use crate::world::{ObjectKey, World};

/// Compiles and publishes; remembers the last diagnostics so that each is
/// logged once, when it appears, not on every reload.
#[derive(Debug)]
pub struct Publisher {
    handle: Arc<SnapshotHandle>,
    metrics: Arc<Metrics>,
    classes: ClassConfig,
    reported: BTreeSet<Diagnostic>,
    prober: Prober,
}

impl Publisher {
    pub fn new(handle: Arc<SnapshotHandle>, metrics: Arc<Metrics>, classes: ClassConfig) -> Self {
        let prober = Prober::new(metrics.clone());
        Self { handle, metrics, classes, reported: BTreeSet::new(), prober }
    }

    /// Compiles `world` and makes the result live. `origin` names where an
    /// object came from (a file), for the logs.
    pub fn apply(&mut self, world: &World, origin: impl Fn(&'static str, &ObjectKey) -> Option<String>) -> Compiled {
        let started = std::time::Instant::now();
        let mut compiled = compile(world, &self.classes);
        let compile_time = started.elapsed();
        let now: BTreeSet<Diagnostic> = compiled.diagnostics.iter().cloned().collect();
        for d in now.difference(&self.reported) {
            let from = origin(d.kind, &d.object).unwrap_or_default();
            tracing::warn!(origin = %from, kind = d.kind, object = %d.object, reason = d.reason.as_str(), "{}", d.message);
        }
        for d in self.reported.difference(&now) {
            tracing::info!(kind = d.kind, object = %d.object, reason = d.reason.as_str(), "resolved: {}", d.message);
        }
        self.reported = now;

        self.metrics.rejected_objects.reset();
        for ((kind, reason), n) in count_by_reason(&compiled.diagnostics) {
            self.metrics.rejected_objects.with_label_values(&[kind, reason.as_str()]).set(n);
        }
        let vhosts = compiled.snapshot.router.vhosts().len();
        let backends = compiled.snapshot.backends.len();
        let snapshot = std::mem::take(&mut compiled.snapshot);
        let generation = self.handle.publish(snapshot);
        self.prober.reconcile(&self.handle.load());
        self.metrics.snapshot_generation.set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.metrics.tls_certificate_expiry.reset();
        for cert in self.handle.load().tls.certs() {
            self.metrics.tls_certificate_expiry.with_label_values(&[&*cert.secret]).set(cert.not_after);
        }
        self.metrics.config_reloads.with_label_values(&["applied"]).inc();
        tracing::info!(
            generation,
            vhosts,
            backends,
            ingresses = compiled.served_ingresses.len(),
            compile_ms = compile_time.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "snapshot live"
        );
        compiled
    }
}

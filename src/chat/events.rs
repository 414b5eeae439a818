//! Publishing: how a use-case hands an event to the bus once its state change is committed.
//! Who receives it is decided by the envelope (`bus::route`); a failed publish is logged and
//! nothing more (the change is committed either way, and receivers fill message gaps from the
//! database and repair lost events, see [`super::heal`]).

use std::sync::Arc;

use crate::bus::{Bus, BusState, Envelope};

/// The bus as the use-cases see it: publish, and whether it is up.
#[derive(Clone)]
pub(crate) struct Events {
    bus: Arc<dyn Bus>,
}

impl Events {
    pub(crate) fn new(bus: Arc<dyn Bus>) -> Self {
        Self { bus }
    }

    /// Publish an event; a failure is logged as a warning.
    pub(crate) async fn publish(&self, env: Envelope) {
        if let Err(e) = self.bus.publish(env).await {
            tracing::warn!(error = %e, "event not published");
        }
    }

    /// Publish an event nobody must get (typing, receipts); a failure is logged quietly.
    pub(crate) async fn offer(&self, env: Envelope) {
        if let Err(e) = self.bus.publish(env).await {
            tracing::debug!(error = %e, "event not published");
        }
    }

    /// Whether the bus is up (the limits fall back to local counting while it is down).
    pub(crate) fn state(&self) -> BusState {
        self.bus.state()
    }

    /// The bus itself, for the parts that own a publishing task (group commit, receipts).
    pub(crate) fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }
}

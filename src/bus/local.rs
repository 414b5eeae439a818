//! The in-process bus of embedded mode: a publish is a dispatch into this replica's fan-out.

use std::sync::Weak;

use async_trait::async_trait;

use super::{Bus, BusState, Envelope, Inbound, InboundSlot};

#[derive(Default)]
pub(crate) struct LocalBus {
    inbound: InboundSlot,
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, env: Envelope) -> anyhow::Result<()> {
        self.inbound.with(|inbound| inbound.receive(env));
        Ok(())
    }

    async fn subscribe(&self, _room: i64) -> anyhow::Result<()> {
        Ok(())
    }

    fn unsubscribe(&self, _room: i64) {}

    fn state(&self) -> BusState {
        BusState::Local
    }

    fn attach(&self, inbound: Weak<dyn Inbound>) {
        self.inbound.set(inbound);
    }
}

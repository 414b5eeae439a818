//! The in-process bus of embedded mode: a publish is a dispatch into this replica's hub.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Bus, BusState, Envelope, hub::Hub};

pub struct LocalBus {
    hub: Arc<Hub>,
}

impl LocalBus {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, env: Envelope) -> anyhow::Result<()> {
        self.hub.dispatch(env);
        Ok(())
    }

    async fn subscribe(&self, _room: i64) -> anyhow::Result<()> {
        Ok(())
    }

    fn unsubscribe(&self, _room: i64) {}

    fn state(&self) -> BusState {
        BusState::Local
    }
}

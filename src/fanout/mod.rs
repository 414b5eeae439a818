//! Fan-out on this replica: who receives what, in which order, and why a socket closes.
//!
//! * [`hub::Hub`]: room channels, every open socket by user, presence counts; receives what
//!   the bus delivers.
//! * [`room`]: one task per room keeps `message` events in `seq` order and fills gaps from
//!   the database.
//! * [`socket::SocketCtl`]: one socket's bounded [`outbox::Outbox`] and its
//!   [`socket::CloseReason`].
//!
//! May import: `store`, `bus`, `domain`, `config`, `telemetry`.

pub(crate) mod hub;
pub(crate) mod outbox;
mod room;
pub(crate) mod socket;

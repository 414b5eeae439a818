//! The service's vocabulary, with no I/O: the wire types clients see ([`model`]), a room as
//! the service knows it ([`room`]), the rules every path validates input with ([`validate`])
//! and the typed inputs parsed with them ([`input`]), and the events that fan out to sockets
//! with their one wire form ([`event`]).
//!
//! May import: `config` (nothing else of the crate).

pub(crate) mod event;
pub(crate) mod input;
pub(crate) mod mention;
pub(crate) mod model;
pub(crate) mod room;
pub(crate) mod validate;

//! SeaORM entities, one per table of `migration`. Written in the shape `sea-orm-cli generate entity`
//! produces; behaviour lives in the server's `store` module, not here.

pub mod message;
pub mod message_mention;
pub mod message_reaction;
pub mod prelude;
pub mod revoked_token;
pub mod room;
pub mod room_member;
pub mod session;
pub mod user;

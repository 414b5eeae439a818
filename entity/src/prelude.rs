pub use super::message::Entity as Message;
pub use super::message_mention::Entity as MessageMention;
pub use super::message_reaction::Entity as MessageReaction;
pub use super::revoked_token::Entity as RevokedToken;
pub use super::room::Entity as Room;
pub use super::room_member::Entity as RoomMember;
pub use super::session::Entity as Session;
pub use super::user::Entity as User;

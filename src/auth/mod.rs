//! Authentication: password hashing, access JWTs, refresh-token sessions (in `store::sessions`),
//! the revocation deny-list and the extractors that turn a request into a [`CurrentUser`].

pub mod denylist;
pub mod extract;
pub mod jwt;
pub mod password;

pub use denylist::DenyList;
pub use extract::CurrentUser;
pub use jwt::{Claims, JwtKeys};
pub use password::PasswordHasher;

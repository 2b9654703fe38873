//! Security properties, in two parts: what ships (no working default secret, headers that keep
//! tokens out of caches) and what one user can do to another and to a replica.

mod other_users;
mod shipped;

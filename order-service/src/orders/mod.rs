//! Orders as they are read: `GET /orders/{orderId}` and `GET /totals`, and the Redis keys every
//! order record lives under.

pub mod routes;
pub mod store;

//! Orders as they are read: `GET /orders/{orderId}` and `GET /totals`, the refund of a completed
//! order (`POST /orders/{orderId}/refunds`), and the Redis keys every order record lives under.

pub mod refunds;
pub mod routes;
pub mod store;

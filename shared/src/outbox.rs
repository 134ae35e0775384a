//! The outbox streams: each service's scripts append the events merchants may subscribe to
//! (an order ended or was refunded; a charge succeeded or was refunded; a wallet credited) to
//! a stream in the same shard — the same Redis Cluster slot — as the change, in the same
//! script, so an event is never lost between a change and its webhook. payment-service's
//! merchant-webhook relay reads them all as one consumer group. The names live here because
//! two services write them and one reads them.

/// An order shard's outbox (order-service's `{ord:S}` slot).
pub fn order_outbox(shard: u16) -> String {
    format!("order:{{ord:{shard}}}:outbox")
}

/// A payment shard's outbox (payment-service's `{pay:S}` slot).
pub fn payment_outbox(shard: u16) -> String {
    format!("payment:{{pay:{shard}}}:outbox")
}

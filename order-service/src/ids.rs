//! The order service's ids and statuses: types, not strings, serialised exactly as the strings
//! they replace (stored records and the HTTP contract are unchanged).

use std::fmt;

use serde::{Deserialize, Serialize};
use shared::ids::{new_id_in_shard, shard_of};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// An id as stored or as another service answered it.
            pub fn from_stored(id: impl Into<String>) -> Self {
                Self(id.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// `ord_` + 22 base-62 digits (32 hex in orders made before #29's sixth pass), in the shard
    /// of the checkout's Idempotency-Key (its record and its orders share a Redis slot).
    OrderId
);
id_type!(
    /// Stock's reservation id (`rsv_<itemId>_…`).
    ReservationId
);
id_type!(
    /// Payment's charge id.
    ChargeId
);

impl OrderId {
    /// A fresh order id in the slot of the checkout key `key`.
    pub fn new_for_key(key: &str) -> Self {
        Self(new_id_in_shard("ord", shard_of(key)))
    }

    /// The Redis shard of its records.
    pub fn shard(&self) -> u16 {
        shard_of(&self.0)
    }
}

macro_rules! name_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

name_enum!(
    /// An order's status, and the totals bucket it counts in.
    OrderStatus {
        Processing => "processing",
        AwaitingPayment => "awaiting_payment",
        Completed => "completed",
        Failed => "failed",
        Compensated => "compensated",
        PartiallyRefunded => "partially_refunded",
        Refunded => "refunded",
    }
);

impl OrderStatus {
    /// Whether `status` is an order's whose checkout completed: completed, or refunded since
    /// (in part or whole). Only such an order can be refunded, and its checkout answered 200.
    pub fn was_completed(status: &str) -> bool {
        [Self::Completed, Self::PartiallyRefunded, Self::Refunded]
            .iter()
            .any(|s| s.as_str() == status)
    }
}

/// A [`name_enum!`] whose values an order's stored steps write as one letter each
/// (orders::store::step_text): every step is fsynced, and a letter saves 5 to 13 bytes. A
/// letter given twice is an unreachable pattern, which the build refuses.
macro_rules! coded_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal / $code:literal),+ $(,)? }) => {
        name_enum!($(#[$doc])* $name { $($variant => $text),+ });

        impl $name {
            pub const ALL: &[Self] = &[$(Self::$variant),+];

            /// Its letter in a stored step.
            pub fn code(self) -> &'static str {
                match self { $(Self::$variant => $code),+ }
            }

            /// The name a stored letter stands for.
            pub fn name_of_code(code: &str) -> Option<&'static str> {
                #[deny(unreachable_patterns)]
                match code { $($code => Some($text),)+ _ => None }
            }
        }
    };
}

coded_enum!(
    /// A saga step, as the order's `steps` name it.
    StepName {
        Created => "created" / "n",
        Reserve => "reserve" / "r",
        Charge => "charge" / "c",
        Complete => "complete" / "k",
        Release => "release" / "l",
        Refund => "refund" / "f",
        Restock => "restock" / "s",
    }
);

coded_enum!(
    /// How a step went.
    StepStatus {
        Succeeded => "succeeded" / "s",
        Declined => "declined" / "d",
        Refused => "refused" / "r",
        Unknown => "unknown" / "u",
        Unavailable => "unavailable" / "a",
        ItemNotFound => "item_not_found" / "i",
        OutOfStock => "out_of_stock" / "o",
        Pending => "pending" / "p",
        Expired => "expired" / "e",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_serialise_as_the_bare_strings_they_replace() {
        let id = OrderId::new_for_key("k1");
        assert_eq!(serde_json::to_string(&id).ok(), Some(format!("\"{id}\"")));
        assert_eq!(id.shard(), shard_of("k1"));
        assert!(id.as_str().starts_with("ord_"));
    }

    #[test]
    fn statuses_and_steps_read_as_stored_and_as_documented() {
        assert_eq!(OrderStatus::Compensated.as_str(), "compensated");
        assert_eq!(StepName::Complete.as_str(), "complete");
        assert_eq!(StepStatus::OutOfStock.as_str(), "out_of_stock");
        for status in [StepStatus::ItemNotFound, StepStatus::OutOfStock, StepStatus::Succeeded] {
            assert_eq!(serde_json::to_value(status).ok(), Some(status.as_str().into()));
        }
        assert_eq!(
            serde_json::to_value(OrderStatus::Processing).ok(),
            Some("processing".into())
        );
    }
}

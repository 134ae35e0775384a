//! Reservations: reserve, release, complete, and the expiry of lapsed ones.

use std::sync::LazyLock;

use redis::AsyncCommands;
use shared::idempotency::{Answer, Begin};
use shared::lua::Script;
use shared::lua::{CLOCK, Lib, RFC3339};

use crate::error::StockError;
use crate::model::ReservationResponse;
use crate::store::{INDEX, Store, expiring_key, item_key, op_key, reservation_prefix};

/// Where a reserve, release or complete (`endpoint`) of the item stores its answer: in the
/// item's slot, which the request names, so a retry of the same request looks in the same place.
pub fn answer_key(item_id: u64, endpoint: &str, idempotency_key: &str) -> String {
    format!("stock:{{item:{item_id}}}:answer:{endpoint}:{idempotency_key}")
}

/// Marks a hole in an answer template. JSON text never holds it raw (serde escapes control
/// characters), so no value can be taken for a hole.
const HOLE: char = '\u{1}';

/// The 201 answer to a reserve, with the values only the script knows left as holes for its
/// `fill`, in this order: reservationId (inside its quotes: a replay names the reservation the
/// key made, not this attempt's), totalFee, currency (likewise), expiresAt (likewise).
pub fn reservation_template(item_id: u64, quantity: u32) -> Vec<u8> {
    let probe = ReservationResponse {
        reservation_id: HOLE.to_string(),
        item_id,
        quantity,
        total_fee: 0,
        currency: HOLE.to_string(),
        status: "reserved".into(),
        expires_at: HOLE.to_string(),
    };
    serde_json::to_string(&probe)
        .unwrap_or_default()
        .replacen(r#""totalFee":0"#, &format!(r#""totalFee":{HOLE}"#), 1)
        .replace(r#""\u0001""#, &format!("\"{HOLE}\""))
        .into_bytes()
}

/// Reservation ids carry their item (`rsv_<itemId>_<random>`), which is how release and
/// complete find the item's slot without a lookup.
pub fn new_reservation_id(item_id: u64) -> String {
    format!(
        "rsv_{item_id}_{}",
        shared::ids::base62(uuid::Uuid::new_v4().as_u128(), 22)
    )
}

pub fn item_of_reservation(rid: &str) -> Option<u64> {
    let rest = rid.strip_prefix("rsv_")?;
    let (item, random) = rest.split_once('_')?;
    let valid = !random.is_empty() && random.len() <= 64 && random.bytes().all(|b| b.is_ascii_alphanumeric());
    if !valid {
        return None;
    }
    item.parse().ok().filter(|id| *id >= 1)
}

/// `fill`, `move`, `sweep`, `fmt` and a reservation's reads and writes, for every stock script.
static STOCK: Lib = Lib {
    name: "stock",
    source: include_str!("stock.lua"),
    needs: &[&CLOCK, &shared::lua::COUNTS, &shared::idempotency::scripts::RECORD],
};

/// `transition`, for release and complete.
static TRANSITION: Lib = Lib {
    name: "transition",
    source: include_str!("transition.lua"),
    needs: &[&shared::idempotency::scripts::ANSWER, &STOCK],
};

fn script(main: &str) -> Script {
    shared::lua::script(&[&shared::idempotency::scripts::ANSWER, &RFC3339, &STOCK], main)
}

static RESERVE: LazyLock<Script> = LazyLock::new(|| script(include_str!("reserve.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| shared::lua::script(&[&CLOCK, &TRANSITION], include_str!("release.lua")));
static COMPLETE: LazyLock<Script> =
    LazyLock::new(|| shared::lua::script(&[&CLOCK, &TRANSITION], include_str!("complete.lua")));
static SWEEP: LazyLock<Script> = LazyLock::new(|| script(include_str!("sweep.lua")));

#[derive(Debug)]
pub enum ReserveOutcome {
    /// `fresh`: made now, its answer stored with it; otherwise the one the key made before.
    Reserved {
        reservation: ReservationResponse,
        fresh: bool,
    },
    NotFound,
    OutOfStock {
        available: i64,
    },
    /// The script took the request's key and did not go on: what the key decided instead.
    Refused(Begin),
}

#[derive(Debug)]
pub enum TransitionOutcome {
    Released,
    Completed,
    NotFound,
    /// As for [`ReserveOutcome::Refused`].
    Refused(Begin),
}

/// The two ways a reservation ends by request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Release,
    Complete,
}

impl Transition {
    pub fn name(self) -> &'static str {
        match self {
            Self::Release => "release",
            Self::Complete => "complete",
        }
    }

    /// What its script answers, and the reservation's status, when it succeeds.
    pub fn status(self) -> &'static str {
        match self {
            Self::Release => "released",
            Self::Complete => "completed",
        }
    }
}

impl Store {
    /// Reserves under `idempotency_key` as `rid` (from [`new_reservation_id`]) for `hold`
    /// (RESERVATION_TTL unless the request asks otherwise), storing `answer` (its body a
    /// [`reservation_template`]) with it, unless the key reserved before: that reservation is
    /// returned, not fresh.
    pub async fn reserve(
        &self,
        item_id: u64,
        quantity: u32,
        rid: &str,
        idempotency_key: &str,
        answer: &Answer<'_>,
        hold: std::time::Duration,
    ) -> Result<ReserveOutcome, StockError> {
        let mut invocation = RESERVE.key(item_key(item_id));
        invocation
            .key(expiring_key(item_id))
            .key(op_key(item_id, idempotency_key))
            .arg(reservation_prefix(item_id))
            .arg(quantity)
            .arg(rid)
            .arg(hold.as_millis() as u64)
            .arg(self.marker_ttl.as_millis() as u64);
        answer.add_to(&mut invocation);
        let reply: Vec<redis::Value> = self.invoke("stock.reserve", &invocation).await?;
        if let Some(decided) = Answer::refusal(&reply) {
            return Ok(ReserveOutcome::Refused(decided?));
        }
        let field = |i: usize| shared::idempotency::reply_text(&reply, i);
        Ok(match field(0).as_str() {
            kind @ ("reserved" | "found") => ReserveOutcome::Reserved {
                reservation: ReservationResponse {
                    reservation_id: field(1),
                    item_id,
                    quantity: field(2).parse().unwrap_or(quantity),
                    total_fee: field(3).parse().unwrap_or(0),
                    currency: field(4),
                    status: "reserved".into(),
                    expires_at: shared::time::rfc3339_ms(field(5).parse().unwrap_or(0)),
                },
                fresh: kind == "reserved",
            },
            "not_found" => ReserveOutcome::NotFound,
            "out_of_stock" => ReserveOutcome::OutOfStock {
                available: field(1).parse().unwrap_or(0),
            },
            other => {
                return Err(shared::CommonError::Internal(format!("reserve script answered {other:?}")).into());
            }
        })
    }

    /// Releases or completes `rid`; when that succeeds, `answer` is stored in the same step.
    pub async fn transition(
        &self,
        action: Transition,
        rid: &str,
        answer: &Answer<'_>,
    ) -> Result<TransitionOutcome, StockError> {
        let Some(item_id) = item_of_reservation(rid) else {
            return Ok(TransitionOutcome::NotFound);
        };
        let (script, operation) = match action {
            Transition::Release => (&*RELEASE, "stock.release"),
            Transition::Complete => (&*COMPLETE, "stock.complete"),
        };
        let mut invocation = script.key(item_key(item_id));
        invocation
            .key(format!("{}{rid}", reservation_prefix(item_id)))
            .key(expiring_key(item_id))
            .arg(rid);
        answer.add_to(&mut invocation);
        let reply: redis::Value = self.invoke(operation, &invocation).await?;
        if let redis::Value::Array(reply) = &reply
            && let Some(decided) = Answer::refusal(reply)
        {
            return Ok(TransitionOutcome::Refused(decided?));
        }
        let reply = shared::idempotency::reply_text(std::slice::from_ref(&reply), 0);
        Ok(match reply.as_str() {
            "released" => TransitionOutcome::Released,
            "completed" => TransitionOutcome::Completed,
            _ => TransitionOutcome::NotFound,
        })
    }

    /// Returns every lapsed reservation to `available`; returns how many were swept.
    pub async fn sweep_all(&self) -> Result<u64, StockError> {
        let mut conn = self.pool.get().await?;
        let ids: Vec<u64> = conn.smembers(INDEX).await?;
        let mut swept = 0;
        for id in ids {
            let n: u64 = SWEEP
                .key(item_key(id))
                .key(expiring_key(id))
                .arg(reservation_prefix(id))
                .invoke_async(&mut conn)
                .await?;
            swept += n;
        }
        Ok(swept)
    }
}

static RESTOCK: LazyLock<Script> = LazyLock::new(|| shared::lua::script(&[&STOCK], include_str!("restock.lua")));

/// How a restock went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestockOutcome {
    Restocked,
    NotCompleted,
    NotFound,
}

impl Store {
    /// Returns a completed reservation's units from sold to available (restock.lua).
    pub async fn restock(&self, rid: &str) -> Result<RestockOutcome, StockError> {
        let Some(item_id) = item_of_reservation(rid) else {
            return Ok(RestockOutcome::NotFound);
        };
        let mut invocation = RESTOCK.key(item_key(item_id));
        invocation.key(format!("{}{rid}", reservation_prefix(item_id)));
        let reply: redis::Value = self.invoke("stock.restock", &invocation).await?;
        Ok(
            match shared::idempotency::reply_text(std::slice::from_ref(&reply), 0).as_str() {
                "restocked" => RestockOutcome::Restocked,
                "not_completed" => RestockOutcome::NotCompleted,
                _ => RestockOutcome::NotFound,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_ids_name_their_item() {
        let rid = new_reservation_id(42);
        assert_eq!(item_of_reservation(&rid), Some(42));
        assert!(shared::ids::is_safe_id(&rid));
    }

    #[test]
    fn answers_live_in_their_items_slot() {
        assert_eq!(
            answer_key(42, "complete", "k}{1"),
            "stock:{item:42}:answer:complete:k}{1"
        );
    }

    #[test]
    fn a_filled_reservation_template_is_the_answer_serde_renders() {
        let rid = new_reservation_id(u64::MAX);
        let template = String::from_utf8(reservation_template(u64::MAX, 1000)).unwrap_or_default();
        let (total, currency, expires) = ("9000000000000", "USD", "2026-11-24T08:00:00.000Z");
        // What the script's `fill` does: each hole in turn takes the next value.
        let mut filled = String::new();
        let mut values = [rid.as_str(), total, currency, expires].into_iter();
        for (i, piece) in template.split(HOLE).enumerate() {
            if i > 0 {
                filled.push_str(values.next().unwrap_or("<too many holes>"));
            }
            filled.push_str(piece);
        }
        assert_eq!(values.next(), None, "a value left over: too few holes in {template}");
        let answer = ReservationResponse {
            reservation_id: rid.clone(),
            item_id: u64::MAX,
            quantity: 1000,
            total_fee: 9_000_000_000_000,
            currency: currency.into(),
            status: "reserved".into(),
            expires_at: expires.into(),
        };
        assert_eq!(filled, serde_json::to_string(&answer).unwrap_or_default());
    }

    #[test]
    fn malformed_reservation_ids_find_no_item() {
        for bad in [
            "",
            "rsv_",
            "rsv_x_abc",
            "rsv_0_abc",
            "rsv_1_",
            "res_1_abc",
            "rsv_1_ab}c",
            "rsv_1_a b",
        ] {
            assert_eq!(item_of_reservation(bad), None, "{bad}");
        }
    }
}

//! The stock service's errors and their one mapping to problem+json.

use actix_web::http::StatusCode;
use shared::{CommonError, Problem};

#[derive(Debug, thiserror::Error)]
pub enum StockError {
    #[error(transparent)]
    Common(#[from] CommonError),
    #[error("item {0} not found")]
    ItemNotFound(String),
    #[error("item {item_id}: {requested} requested, {available} available")]
    OutOfStock {
        item_id: u64,
        requested: u32,
        available: i64,
    },
    #[error("reservation {0} not found")]
    ReservationNotFound(String),
    #[error("reservation {0} is completed")]
    ReservationCompleted(String),
    #[error("reservation {0} was released or expired")]
    ReservationReleased(String),
    #[error("reservation {0} is not completed")]
    ReservationNotCompleted(String),
    #[error("account {0} not found")]
    AccountNotFound(String),
}

shared::service_error!(StockError);

impl StockError {
    /// The one mapping to problem+json ([`shared::ServiceError::problem`]).
    fn to_problem(&self) -> Problem {
        use StatusCode as S;
        match self {
            Self::Common(e) => e.problem(),
            Self::ItemNotFound(id) => Problem::new(
                S::NOT_FOUND,
                "item-not-found",
                "Item not found",
                format!("no item with id {id}"),
            ),
            Self::OutOfStock {
                item_id,
                requested,
                available,
            } => Problem::new(
                S::CONFLICT,
                "out-of-stock",
                "Out of stock",
                format!("item {item_id} has {available} units available, {requested} requested"),
            )
            .with("itemId", *item_id)
            .with("available", *available),
            Self::AccountNotFound(id) => Problem::new(
                S::NOT_FOUND,
                "account-not-found",
                "Account not found",
                format!("ownerId {id} names no account"),
            ),
            Self::ReservationNotFound(id) => Problem::new(
                S::NOT_FOUND,
                "reservation-not-found",
                "Reservation not found",
                format!("no reservation with id {id}"),
            ),
            Self::ReservationCompleted(id) => Problem::new(
                S::CONFLICT,
                "reservation-completed",
                "Reservation completed",
                format!("reservation {id} is already completed and cannot be released"),
            ),
            Self::ReservationReleased(id) => Problem::new(
                S::CONFLICT,
                "reservation-released",
                "Reservation released",
                format!("reservation {id} was released or expired and cannot be completed"),
            ),
            Self::ReservationNotCompleted(id) => Problem::new(
                S::CONFLICT,
                "reservation-not-completed",
                "Reservation not completed",
                format!("reservation {id} is not completed: only sold units can be restocked"),
            ),
        }
    }
}

//! Charges: `POST /charge` (through the route's providers, then recorded with its key's marker
//! in one script), and reading them back by id or by order.

#[cfg(test)]
mod script_tests;
mod store;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use shared::CommonError;
use shared::ServiceError;
use shared::idempotency::{self, Begin, IdempotencyStore, IdempotentPost, KeyRef, Note, Outcome, StoredResponse};

use crate::AppState;
use crate::error::PaymentError;
use crate::gateways::client::{self, ChargeReply, Sent};
use crate::gateways::failover::{self, Move};
use crate::gateways::{FAILOVERS, MethodKind};
use crate::model::{Charge, ChargeRequest, ChargeResponse, ChargesQuery, OrderCharges, PixCode};
use crate::splits::SplitPlan;
use crate::store::{answer_key, new_charge_id_for};
use crate::wallets::{Kind, Moved, Movement, WALLET, WALLET_EVENTS, new_transaction_id};
pub use store::{ChargeOutcome, NewCharge, Recorded, WalletCharge};

/// Ids echoed in a 404 are cut short: they come from the client.
pub(crate) fn not_found(charge_id: &str) -> PaymentError {
    PaymentError::ChargeNotFound(charge_id.chars().take(128).collect())
}

#[utoipa::path(
    post, path = "/charge", request_body = ChargeRequest,
    params(("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters")),
    responses(
        (status = 201, body = ChargeResponse, description = "succeeded; or, for a Pix, pending with its code until the provider's webhook says it was paid"),
        (status = 400, description = "invalid-request (also an unknown paymentMethod), idempotency-key-missing or -invalid"),
        (status = 402, description = "payment-declined, with declineCode and chargeId; declineCode processing_error (no chargeId) when no provider could process it and nothing was charged"),
        (status = 503, description = "gateway-unavailable: the provider it went to did not answer; retry with the same key, it is resolved there")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_charge(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PaymentError> {
    let IdempotentPost { key, body, key_ref } =
        idempotency::read_post::<ChargeRequest>(&req, payload, &state.settings.common.internal_token, "payment:charge")
            .await?;
    let key_ref = key_ref.with_answer_at(answer_key(&body.order_id, &key));
    let kind = MethodKind::of(body.payment_method);
    // The provider a new charge goes to first, noted with the key in the same step that takes
    // it: from then on the key is pinned there until that provider answers or proves it
    // holds nothing (gateways::failover).
    let first = match kind {
        MethodKind::Wallet => WALLET.to_string(),
        _ => state
            .gateways
            .next_usable(kind, None)
            .map(|p| p.name.clone())
            .unwrap_or_default(),
    };
    let fresh = shared::ids::new_id("op");
    let (token, note) = match state.idempotency.begin_noted(&key_ref, &fresh, &first).await? {
        (Begin::Execute { token, .. }, Some(note)) => (token, note),
        (Begin::Replay(stored), _) if stored.body.is_empty() => {
            return replay_of_recorded(&state, &key_ref, stored).await;
        }
        (other, _) => return Ok(IdempotencyStore::refusal(other)?),
    };
    // The split in effect now for the charge's item, read before anything is charged: a read
    // that fails leaves nothing to undo.
    let split = match body.item_id {
        Some(item_id) => match crate::splits::plan_for(&state, item_id, body.amount).await {
            Ok(plan) => plan,
            Err(e) => return Ok(state.idempotency.settle(&key_ref, &token, Outcome::of(Err(e))).await),
        },
        None => None,
    };
    let attempt = Attempt {
        state: &state,
        key_ref: &key_ref,
        token: &token,
        body: &body,
        key: &key,
        kind,
        split: split.as_ref(),
    };
    Ok(match attempt.run(note).await {
        Settled::Outcome(outcome) => state.idempotency.settle(&key_ref, &token, outcome).await,
        Settled::Pinned(e) => {
            // The key keeps its note: the next request with it resumes at once, at that provider.
            if let Err(not_yielded) = state.idempotency.yield_key(&key_ref, &token).await {
                tracing::warn!(error = %not_yielded, "could not yield the key; its lease will run out");
            }
            e.respond()
        }
    })
}

/// The replay of a key whose record keeps no body: the charge it recorded answers its 201
/// again, as [`answer_to`] answered it then (the charge's fields that answer names never
/// change). A record that names no charge replays as stored.
async fn replay_of_recorded(
    state: &AppState,
    key_ref: &KeyRef,
    stored: StoredResponse,
) -> Result<HttpResponse, PaymentError> {
    let Some(charge_id) = state.idempotency.made(key_ref).await? else {
        return Ok(IdempotencyStore::refusal(Begin::Replay(stored))?);
    };
    let charge = state.store.get_charge(&charge_id).await?.ok_or_else(|| {
        PaymentError::from(CommonError::Internal(format!(
            "the charge {charge_id} its key's record names is gone"
        )))
    })?;
    let recorded = Recorded {
        charge_id: charge.charge_id,
        order_id: charge.order_id,
        amount: charge.amount,
        currency: charge.currency,
        decline_code: charge.decline_code,
        fresh: false,
        pix_code: charge.pix.map(|p| p.code),
    };
    Ok(IdempotencyStore::refusal(Begin::Replay(answer_to(&recorded)))?)
}

/// How a charge request ends for its key.
enum Settled {
    Outcome(Outcome),
    /// The charge may be at a provider that did not answer: the key stays pinned there.
    Pinned(PaymentError),
}

/// One charge request, from its key's note to a recorded answer.
struct Attempt<'a> {
    state: &'a AppState,
    key_ref: &'a KeyRef,
    token: &'a str,
    body: &'a ChargeRequest,
    key: &'a str,
    kind: MethodKind,
    split: Option<&'a SplitPlan>,
}

/// The provider's Idempotency-Key for a charge request: derived from ours and from the request,
/// the same for every retry of it, at whichever provider (each keeps its own keys).
pub(crate) fn provider_key(key_ref: &KeyRef) -> String {
    let text = format!("{}\n{}", key_ref.redis_key(), key_ref.fingerprint());
    format!("pay_{}", idempotency::short_digest(&text, 20))
}

impl Attempt<'_> {
    /// Goes through the route from the noted provider: records the first answer; moves on only
    /// past a provider that certainly did not take the charge.
    async fn run(&self, note: Note) -> Settled {
        let gateways = &self.state.gateways;
        let provider_key = provider_key(self.key_ref);
        let request = client::ChargeRequest {
            key: &provider_key,
            order_id: &self.body.order_id,
            amount: self.body.amount,
            currency: &self.body.currency,
            customer_id: &self.body.customer_id,
            payment_method: self.body.payment_method.as_str(),
        };
        let no_gateway = || {
            Settled::Outcome(Outcome::of(Err(PaymentError::NoGateway {
                kind: self.kind.to_string(),
            })))
        };
        if self.kind == MethodKind::Wallet {
            return Settled::Outcome(self.debit_wallet(&provider_key).await);
        }
        let (mut at, mut sticky) = (note.text, note.inherited);
        loop {
            let Some(provider) = gateways.get(&at) else {
                if sticky && !at.is_empty() {
                    // Pinned to a provider no longer configured: only it could say.
                    return Settled::Pinned(PaymentError::GatewayUnknown { gateway: at });
                }
                return no_gateway();
            };
            let sent = provider.charge(&request).await;
            match failover::after_attempt(&sent, sticky) {
                Move::Record => {
                    let Sent::Answered(reply) = sent else {
                        return Settled::Outcome(Outcome::of(Err(PaymentError::from(CommonError::Internal(
                            "a recorded move without an answer".into(),
                        )))));
                    };
                    return Settled::Outcome(self.record(&at, reply, new_charge_id_for(&self.body.order_id)).await);
                }
                Move::Wait => return Settled::Pinned(PaymentError::GatewayUnknown { gateway: at }),
                Move::TryNext => {
                    let Some(next) = gateways.next_usable(self.kind, Some(&at)) else {
                        return no_gateway();
                    };
                    match self
                        .state
                        .idempotency
                        .renote(self.key_ref, self.token, &next.name)
                        .await
                    {
                        Ok(true) => {}
                        // Another request took the key over (this one's lease ran out): it goes on.
                        Ok(false) => return Settled::Outcome(Outcome::Hold(self.unknown(&at))),
                        // The note may or may not have moved; nothing was sent to `next`, and
                        // whichever provider it names, a retry resolves there.
                        Err(e) => {
                            return Settled::Outcome(Outcome::Hold(StoredResponse::problem(
                                &PaymentError::from(e).problem(),
                            )));
                        }
                    }
                    FAILOVERS.inc(&[("from", &at), ("to", &next.name)]);
                    tracing::warn!(from = %at, to = %next.name, order_id = %self.body.order_id, "charge failed over");
                    (at, sticky) = (next.name.clone(), false);
                }
            }
        }
    }

    fn unknown(&self, gateway: &str) -> StoredResponse {
        StoredResponse::problem(
            &PaymentError::GatewayUnknown {
                gateway: gateway.to_string(),
            }
            .problem(),
        )
    }

    /// Debits the customer's wallet under the charge request's provider key, then records the
    /// charge as from any provider (`gateway: "wallet"`). Too little in the wallet: a declined
    /// charge (`insufficient_funds`), nothing debited. A retry after a crash between the two
    /// finds the debit by its key and records the charge it names.
    async fn debit_wallet(&self, provider_key: &str) -> Outcome {
        let body = self.body;
        let charge_id = new_charge_id_for(&body.order_id);
        // A customerId that cannot name a wallet (wallets are named by letters, digits, '_'
        // and '-') has none, and so nothing in it: declined like any empty wallet.
        if !shared::ids::is_safe_id(&body.customer_id) {
            return self.declined_by_wallet(charge_id).await;
        }
        let transaction_id = new_transaction_id();
        let debit = Movement {
            customer_id: &body.customer_id,
            kind: Kind::Debit,
            amount: body.amount,
            currency: &body.currency,
            key: provider_key,
            transaction_id: &transaction_id,
            charge_id: Some(&charge_id),
            correlation: &body.order_id,
        };
        let store = &self.state.store;
        let moved = if store.one_node {
            // The debit and the charge's record in one script: one round trip, not two.
            let new = self.new_charge(&charge_id, WALLET, &transaction_id, None, None);
            let answer = self.answer_for(&charge_id, None, None);
            let stored = self.stored(&answer);
            match store.wallet_charge(&debit, &new, self.key, &stored).await {
                Ok(WalletCharge::Charged(outcome)) => {
                    WALLET_EVENTS.inc(&[("event", "debited")]);
                    crate::events::EVENTS_APPENDED.inc(&[("type", "wallet.debited")]);
                    return self.recorded(WALLET, Ok(outcome), answer);
                }
                Ok(WalletCharge::NotDebited(moved)) => Ok(moved),
                Err(e) => Err(e),
            }
        } else {
            store.move_wallet(&debit).await
        };
        match moved {
            Ok(Moved::Done { tx, fresh }) => {
                if fresh {
                    WALLET_EVENTS.inc(&[("event", "debited")]);
                    crate::events::EVENTS_APPENDED.inc(&[("type", "wallet.debited")]);
                }
                // A debit found by its key names the charge it was made for.
                let charge_id = tx.charge_id.unwrap_or(charge_id);
                let reply = ChargeReply::Succeeded {
                    reference: tx.transaction_id,
                };
                self.record(WALLET, reply, charge_id).await
            }
            Ok(Moved::Insufficient { .. }) => self.declined_by_wallet(charge_id).await,
            Ok(Moved::Limit { .. }) => Outcome::of(Err(PaymentError::from(CommonError::Internal(
                "a debit refused for the balance limit".into(),
            )))),
            Err(e) => Outcome::of(Err(e)),
        }
    }

    async fn declined_by_wallet(&self, charge_id: String) -> Outcome {
        WALLET_EVENTS.inc(&[("event", "declined")]);
        let reply = ChargeReply::Declined {
            reference: String::new(),
            code: "insufficient_funds".into(),
        };
        self.record(WALLET, reply, charge_id).await
    }

    fn new_charge<'b>(
        &'b self,
        charge_id: &'b str,
        gateway: &'b str,
        reference: &'b str,
        decline_code: Option<&'b str>,
        pix_code: Option<&'b str>,
    ) -> NewCharge<'b> {
        let body = self.body;
        NewCharge {
            charge_id,
            order_id: &body.order_id,
            amount: body.amount,
            currency: &body.currency,
            customer_id: &body.customer_id,
            payment_method: body.payment_method.as_str(),
            decline_code,
            gateway,
            gateway_reference: reference,
            split: self.split,
            pix_code,
            item_id: body.item_id,
        }
    }

    /// The answer a charge recorded now gets: known before the charge is recorded, so the
    /// script stores it with the charge.
    fn answer_for(&self, charge_id: &str, decline_code: Option<&str>, pix_code: Option<&str>) -> StoredResponse {
        let body = self.body;
        answer_to(&Recorded {
            charge_id: charge_id.to_string(),
            order_id: body.order_id.clone(),
            amount: body.amount,
            currency: body.currency.clone(),
            decline_code: decline_code.map(str::to_string),
            fresh: true,
            pix_code: pix_code.map(str::to_string),
        })
    }

    /// The answer as the charge's script stores it. The key's record names the charge
    /// (`made`), so a 201's replay is rendered from it ([`replay_of_recorded`]) and the record
    /// keeps no body; a decline's problem names the request that was declined (`instance`),
    /// which no charge keeps, so its body is stored.
    fn stored<'b>(&'b self, answer: &'b StoredResponse) -> idempotency::Answer<'b> {
        let stored = self.state.idempotency.answer(self.key_ref, self.token, answer);
        if answer.status == StatusCode::CREATED.as_u16() {
            stored.rendered_on_replay()
        } else {
            stored
        }
    }

    /// Records the provider's answer with the charge, its key's marker and its answer, in one
    /// script. A declined charge is recorded too (the order's history shows it) and answered 402.
    async fn record(&self, gateway: &str, reply: ChargeReply, charge_id: String) -> Outcome {
        let (reference, decline_code, pix_code) = match &reply {
            ChargeReply::Succeeded { reference } => (reference.as_str(), None, None),
            ChargeReply::Declined { reference, code } => (reference.as_str(), Some(code.as_str()), None),
            ChargeReply::Pending { reference, code } => (reference.as_str(), None, Some(code.as_str())),
        };
        let new = self.new_charge(&charge_id, gateway, reference, decline_code, pix_code);
        let answer = self.answer_for(&charge_id, decline_code, pix_code);
        let stored = self.stored(&answer);
        let outcome = self.state.store.charge(&new, self.key, &stored).await;
        self.recorded(gateway, outcome, answer)
    }

    /// Counts, logs and answers what the record script answered.
    fn recorded(&self, gateway: &str, outcome: Result<ChargeOutcome, PaymentError>, answer: StoredResponse) -> Outcome {
        let recorded = match outcome {
            Ok(ChargeOutcome::Recorded(r)) => r,
            Ok(ChargeOutcome::KeyReused) => {
                return Outcome::of(Err(PaymentError::from(CommonError::IdempotencyKeyReused)));
            }
            Err(e) => return Outcome::of(Err(e)),
        };
        // The metric's outcome, and the event the script appended (none for a found charge).
        let (event, appended) = match (&recorded.decline_code, &recorded.pix_code, recorded.fresh) {
            (_, _, false) => ("found", None),
            (None, Some(_), true) => ("pending", Some("charge.pending")),
            (None, None, true) => ("succeeded", Some("charge.succeeded")),
            (Some(_), _, true) => ("declined", Some("charge.declined")),
        };
        shared::metrics::event("charge", event);
        if recorded.fresh && event == "succeeded" && self.split.is_some() {
            crate::splits::SPLIT_EVENTS.inc(&[("event", "executed")]);
            crate::events::EVENTS_APPENDED.inc(&[("type", "split.executed")]);
        }
        if let Some(kind) = appended {
            crate::events::EVENTS_APPENDED.inc(&[("type", kind)]);
        }
        match &recorded.decline_code {
            None => {
                tracing::info!(charge_id = %recorded.charge_id, order_id = %recorded.order_id, gateway, "charge succeeded")
            }
            Some(decline_code) => tracing::info!(
                charge_id = %recorded.charge_id,
                order_id = %recorded.order_id,
                gateway,
                %decline_code,
                "charge declined"
            ),
        }
        if recorded.fresh {
            Outcome::answered(self.key_ref, answer)
        } else {
            // An earlier execution's charge, found by its marker: its answer is stored as usual.
            Outcome::by_status(answer_to(&recorded))
        }
    }
}

/// The answer to a charge request: 201 with the charge, or 402 with its decline.
fn answer_to(recorded: &Recorded) -> StoredResponse {
    match &recorded.decline_code {
        None => StoredResponse::json(
            StatusCode::CREATED,
            &ChargeResponse {
                charge_id: recorded.charge_id.clone(),
                status: if recorded.pix_code.is_some() {
                    "pending"
                } else {
                    "succeeded"
                }
                .into(),
                amount: recorded.amount,
                currency: recorded.currency.clone(),
                order_id: recorded.order_id.clone(),
                pix: recorded.pix_code.clone().map(|code| PixCode { code }),
            },
        ),
        Some(decline_code) => StoredResponse::problem(
            &PaymentError::Declined {
                charge_id: recorded.charge_id.clone(),
                decline_code: decline_code.clone(),
            }
            .problem(),
        ),
    }
}

#[utoipa::path(
    get, path = "/charges/{chargeId}",
    params(("chargeId" = String, Path, description = "`ch_`, its shard as 2 hex digits and 20 letters or digits (older charges: `ch_` and 32 hex digits)")),
    responses((status = 200, body = Charge), (status = 404, description = "charge-not-found")),
    security(("bearer" = []))
)]
pub(crate) async fn get_charge(
    req: HttpRequest,
    state: web::Data<AppState>,
    charge_id: web::Path<String>,
) -> Result<HttpResponse, PaymentError> {
    shared::auth::require(&req, &state.settings.common.internal_token)?;
    let charge = state
        .store
        .get_charge(&charge_id)
        .await?
        .ok_or_else(|| not_found(&charge_id))?;
    Ok(HttpResponse::Ok().json(charge))
}

#[utoipa::path(
    get, path = "/charges",
    params(("orderId" = String, Query, min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_-]+$", description = "the order whose charges to list")),
    responses(
        (status = 200, body = OrderCharges, description = "oldest first; empty for an unknown order"),
        (status = 400, description = "invalid-request: orderId missing or malformed")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_charges(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, PaymentError> {
    shared::auth::require(&req, &state.settings.common.internal_token)?;
    let query = web::Query::<ChargesQuery>::from_query(req.query_string())
        .map_err(|e| PaymentError::invalid(format!("invalid query: {e}")))?;
    let order_id = query
        .into_inner()
        .order_id
        .filter(|id| shared::ids::is_safe_id(id))
        .ok_or_else(|| {
            PaymentError::invalid("the orderId query parameter is required: 1 to 128 letters, digits, '_' and '-'")
        })?;
    let charges = state.store.charges_of_order(&order_id).await?;
    Ok(HttpResponse::Ok().json(OrderCharges { order_id, charges }))
}

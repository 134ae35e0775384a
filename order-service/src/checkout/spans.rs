//! The spans of saga steps, `saga <step>`, with `order.id`: a step's downstream calls and Redis
//! operations nest under it. Compensations (release, refund) carry `saga.compensation = true`
//! so they can be searched for in Jaeger.

use tracing::Span;

use crate::ids::{OrderId, StepName};

pub fn step_span(step: StepName, order_id: &OrderId, compensation: bool) -> Span {
    tracing::info_span!(
        "saga step",
        otel.name = %format_args!("saga {step}"),
        saga.step = step.as_str(),
        saga.compensation = compensation,
        order.id = %order_id,
    )
}

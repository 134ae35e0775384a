"""schemathesis hooks for the e2e run (tests/api_schema.rs).

1. Every request with a valid Idempotency-Key gets a fresh one just before it is sent, as a
   client would send: generated keys repeat (the shortest strings most of all), and a repeated
   key with another body is, rightly, 422 idempotency-key-reused, so the fuzzer would test the
   key's refusals instead of the operation. A key the fuzzer made invalid on purpose is left as
   it is, so the server's refusal of it is still tested.

2. An integer the fuzzer spells as a whole float (`100.0`) in a body it means to be valid is
   sent as the integer. JSON Schema 2020-12 (OpenAPI 3.1) counts `100.0` as an integer; this
   API refuses it on purpose (an amount written `100.0` suggests the client thinks in dollars,
   not cents; Stripe refuses it too; the documents say so) and no schema keyword can express
   that. Only valid (positive) cases are touched: nothing a negative case means to test.
"""

import re
import uuid

import schemathesis

VALID_KEY = re.compile(r"[!-~]{1,255}")


def _whole_floats_as_integers(value):
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_floats_as_integers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_floats_as_integers(v) for v in value]
    return value


def _is_positive(case):
    meta = getattr(case, "meta", None)
    generation = getattr(meta, "generation", None)
    mode = getattr(generation, "mode", None)
    return bool(mode is not None and mode.is_positive)


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if case.headers:
        for name in list(case.headers):
            if name.lower() == "idempotency-key" and VALID_KEY.fullmatch(str(case.headers[name])):
                case.headers[name] = f"st-{uuid.uuid4()}"
    if _is_positive(case) and isinstance(case.body, (dict, list)):
        case.body = _whole_floats_as_integers(case.body)

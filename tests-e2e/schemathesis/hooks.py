"""schemathesis hooks for the e2e run (tests/api_schema.rs).

Every request with a valid Idempotency-Key gets a fresh one just before it is sent, as a client
would send: generated keys repeat (the shortest strings most of all), and a repeated key with
another body is, rightly, 422 idempotency-key-reused, so the fuzzer would test the key's
refusals instead of the operation. A key the fuzzer made invalid on purpose is left as it is,
so the server's refusal of it is still tested.
"""

import re
import uuid

import schemathesis

VALID_KEY = re.compile(r"[!-~]{1,255}")


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if not case.headers:
        return
    for name in list(case.headers):
        if name.lower() == "idempotency-key" and VALID_KEY.fullmatch(str(case.headers[name])):
            case.headers[name] = f"st-{uuid.uuid4()}"

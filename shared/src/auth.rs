//! The internal bearer token that guards internal and admin endpoints.

use actix_web::HttpRequest;
use actix_web::http::header;

use crate::config::Secret;
use crate::problem::CommonError;

/// Passes when `Authorization: Bearer <token>` matches, comparing in constant time so the
/// token cannot be guessed byte by byte from response timings.
pub fn require(req: &HttpRequest, token: &Secret) -> Result<(), CommonError> {
    let presented = bearer(req)?;
    if constant_time_eq(presented.as_bytes(), token.expose().as_bytes()) {
        Ok(())
    } else {
        Err(CommonError::Unauthorized)
    }
}

/// The credential of `Authorization: Bearer <credential>`; 401 without one.
pub(crate) fn bearer(req: &HttpRequest) -> Result<&str, CommonError> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(CommonError::Unauthorized)
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let token = Secret::new("s3cret");
        let ok = TestRequest::default()
            .insert_header(("authorization", "Bearer s3cret"))
            .to_http_request();
        assert!(require(&ok, &token).is_ok());
        for bad in ["Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "s3cret", "Bearer "] {
            let req = TestRequest::default()
                .insert_header(("authorization", bad))
                .to_http_request();
            assert!(require(&req, &token).is_err(), "{bad} should be refused");
        }
        assert!(require(&TestRequest::default().to_http_request(), &token).is_err());
    }
}

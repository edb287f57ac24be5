//! API errors and the HTTP answers they make: `{"error": "..."}` with 400 for
//! bad input, 401 without the token, 503 when the database is slow, busy or
//! away (statement timeout, no free connection), 500 only for the server's own
//! faults (a failed task). Classified from error values (SQLSTATE), never from message text.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Busy(String),
    #[error("{}", .0.one_line())]
    Db(#[from] crate::db::DbError),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Db(e) => db_status(e),
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::Db(e) if is_timeout(e) => format!(
                "the query took longer than the server's statement timeout (--statement-timeout) and was cancelled: {}",
                e.one_line()
            ),
            other => other.to_string(),
        }
    }
}

fn is_timeout(e: &crate::db::DbError) -> bool {
    use tokio_postgres::error::SqlState;
    match e {
        crate::db::DbError::Query { source, .. } => {
            source.code() == Some(&SqlState::QUERY_CANCELED)
        }
        _ => false,
    }
}

/// Timeouts and an unreachable database are the environment's: 503; a data
/// exception (SQLSTATE class 22, 23, 54) on a read-only query comes from the
/// parameters sent: 400.
fn db_status(e: &crate::db::DbError) -> StatusCode {
    match e.fault() {
        crate::db::Fault::Data => StatusCode::BAD_REQUEST,
        crate::db::Fault::Environment => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!("{}", self.message());
        }
        let mut resp =
            (status, Json(serde_json::json!({ "error": self.message() }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

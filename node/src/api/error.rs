use crate::network::{NetworkStopped, PublishError};
use crate::types::ErrorBody;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error answer: a status code and a JSON body `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: message.into(),
        }
    }
}

impl From<NetworkStopped> for ApiError {
    fn from(e: NetworkStopped) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: e.to_string(),
        }
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> ApiError {
        let status = match e {
            PublishError::Invalid(_) => StatusCode::BAD_REQUEST,
            PublishError::Forbidden(_) => StatusCode::FORBIDDEN,
            PublishError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            PublishError::QueuesFull(_) => StatusCode::SERVICE_UNAVAILABLE,
            PublishError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

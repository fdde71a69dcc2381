//! The API's errors and their statuses: every refusal is one of these, answered as
//! `{"error": "<one line>"}` with the status below.

use crate::grant::GrantError;
use cma::CmaError;

/// Why an API request was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or asks for something impossible (400).
    #[error("{0}")]
    BadRequest(String),
    /// The chunk belongs to a device model, not to the API (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such chunk or region (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state: no space, busy, being moved (409).
    #[error("{0}")]
    Conflict(String),
    /// A request that needs a body came without `Content-Length` (411).
    #[error("this request needs a JSON body with a Content-Length header")]
    LengthRequired,
    /// The VMM failed (500).
    #[error("{0}")]
    Internal(String),
    /// The guest agent did not do its part: not running, timed out, failed (503).
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound(_) => 404,
            ApiError::Conflict(_) => 409,
            ApiError::LengthRequired => 411,
            ApiError::Internal(_) => 500,
            ApiError::Unavailable(_) => 503,
        }
    }
}

impl From<CmaError> for ApiError {
    fn from(e: CmaError) -> Self {
        let msg = e.to_string();
        match e {
            CmaError::ZeroSize
            | CmaError::TooLarge { .. }
            | CmaError::BadAlign(_)
            | CmaError::BadOffset { .. }
            | CmaError::Unreachable { .. }
            | CmaError::UnknownRegion(_)
            | CmaError::NoRegions
            | CmaError::UnmappedDevice(_)
            | CmaError::PrivateRegion { .. } => ApiError::BadRequest(msg),
            CmaError::UnknownRegionId(_)
            | CmaError::DoubleFree(_)
            | CmaError::ForeignChunk(_)
            | CmaError::WrongRegion { .. }
            | CmaError::UnknownChunk(_) => ApiError::NotFound(msg),
            CmaError::ChunkMoving(_) | CmaError::NoSpace { .. } | CmaError::Busy { .. } => {
                ApiError::Conflict(msg)
            }
            CmaError::ClaimFailed { .. } => ApiError::Unavailable(msg),
            CmaError::BadRegionTable(_) => ApiError::Internal(msg),
        }
    }
}

impl From<GrantError> for ApiError {
    fn from(e: GrantError) -> Self {
        match e {
            GrantError::Cma(e) => e.into(),
            GrantError::SharedPrivate(_) => ApiError::BadRequest(e.to_string()),
            GrantError::UnknownChunk(_) => ApiError::NotFound(e.to_string()),
            GrantError::Memory(_) => ApiError::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cma::ChunkId;

    #[test]
    fn allocator_errors_map_to_statuses() {
        let id = ChunkId::from_parts(1, 0, 7);
        let cases = [
            (CmaError::ZeroSize, 400),
            (CmaError::BadAlign(3), 400),
            (CmaError::UnknownRegion("x".into()), 400),
            (CmaError::UnmappedDevice("d".into()), 400),
            (CmaError::UnknownChunk(id), 404),
            (CmaError::DoubleFree(id), 404),
            (CmaError::ForeignChunk(id), 404),
            (CmaError::ChunkMoving(id), 409),
            (
                CmaError::NoSpace {
                    region: "a".into(),
                    size: 1,
                },
                409,
            ),
            (
                CmaError::Busy {
                    region: "a".into(),
                    attempts: 16,
                    last_busy: 0,
                },
                409,
            ),
            (
                CmaError::ClaimFailed {
                    region: "a".into(),
                    gpa: 0,
                    len: 1,
                    reason: "timeout".into(),
                },
                503,
            ),
            (CmaError::BadRegionTable("x".into()), 500),
        ];
        for (e, status) in cases {
            let text = e.to_string();
            let api = ApiError::from(GrantError::from(e));
            assert_eq!(api.status(), status, "{text}");
            assert_eq!(api.to_string(), text);
        }
        let shared = ApiError::from(GrantError::SharedPrivate("s".into()));
        assert_eq!(shared.status(), 400);
    }
}

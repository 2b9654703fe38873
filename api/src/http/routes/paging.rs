//! Paging parameters as the REST routes read them, checked into the store's [`PageRequest`].

use crate::http::error::ApiError;
use crate::store::paging::{Cursor, PageRequest};
use utoipa::IntoParams;

/// Paging parameters as they arrive; parsed by hand so a bad value gets our error shape.
#[derive(Debug, Default, serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
    /// Items per page, 1 to 100 (default 50).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
}

impl PageQuery {
    pub const DEFAULT_LIMIT: u64 = 50;
    pub const MAX_LIMIT: u64 = 100;

    pub fn limit(&self) -> Result<u64, ApiError> {
        match &self.limit {
            None => Ok(Self::DEFAULT_LIMIT),
            Some(raw) => match raw.parse::<u64>() {
                Ok(n) if (1..=Self::MAX_LIMIT).contains(&n) => Ok(n),
                _ => Err(ApiError::unprocessable(
                    "invalid_limit",
                    format!(
                        "`limit` must be a whole number from 1 to {}",
                        Self::MAX_LIMIT
                    ),
                )),
            },
        }
    }

    pub fn cursor(&self) -> Result<Option<Cursor>, ApiError> {
        let Some(raw) = self.after.as_deref() else {
            return Ok(None);
        };
        Cursor::decode(raw).map(Some).ok_or_else(|| {
            ApiError::unprocessable(
                "invalid_cursor",
                "`after` is not a cursor this API gave out",
            )
        })
    }

    /// The page asked for, checked.
    pub fn page(&self) -> Result<PageRequest, ApiError> {
        Ok(PageRequest {
            after: self.cursor()?,
            limit: self.limit()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_the_api_did_not_give_out_is_422() {
        let q = PageQuery {
            after: Some("junk!".into()),
            limit: None,
        };
        assert!(q.page().is_err());
        assert!(PageQuery::default().page().is_ok());
    }

    #[test]
    fn limits_are_bounded() {
        let q = |l: &str| PageQuery {
            after: None,
            limit: Some(l.into()),
        };
        assert_eq!(PageQuery::default().limit().ok(), Some(50));
        assert_eq!(q("100").limit().ok(), Some(100));
        assert!(q("0").limit().is_err());
        assert!(q("101").limit().is_err());
        assert!(q("ten").limit().is_err());
    }
}

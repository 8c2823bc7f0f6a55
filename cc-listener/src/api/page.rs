//! Pages of a listing (`GET /agents`, `GET /reports`): cut by rows and by
//! bytes (`paginate`), read from the store and sent in pieces
//! (`stream_array`), so a request holds about two pieces in memory
//! whatever the page's size; the cursor for the next page goes in a
//! header (`json_response`).

use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::warn;

/// A JSON array streamed piece by piece: `fetch` gives each piece's
/// serialised items (an empty vector for an empty piece; an error ends the
/// body early, which the client sees as a broken response).
pub(super) fn stream_array<K, F, Fut>(pieces: Vec<(K, K)>, fetch: F) -> axum::body::Body
where
    K: Send + 'static,
    F: Fn(K, K) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Vec<u8>>> + Send,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    tokio::spawn(async move {
        if tx.send(Ok(Bytes::from_static(b"["))).await.is_err() {
            return;
        }
        let mut first = true;
        for (a, b) in pieces {
            let items = match fetch(a, b).await {
                Ok(items) => items,
                Err(e) => {
                    warn!("reading a page failed mid-way: {e:#}");
                    let _ = tx.send(Err(std::io::Error::other("reading failed"))).await;
                    return;
                }
            };
            if items.is_empty() {
                continue;
            }
            let mut buf = Vec::with_capacity(items.len() + 1);
            if !first {
                buf.push(b',');
            }
            first = false;
            buf.extend_from_slice(&items);
            // The client went away: stop reading.
            if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Ok(Bytes::from_static(b"]"))).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    axum::body::Body::from_stream(stream)
}

/// Items serialised and joined by commas.
pub(super) fn join_json<T: Serialize>(
    items: impl IntoIterator<Item = T>,
) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        serde_json::to_writer(&mut buf, &item)?;
    }
    Ok(buf)
}

pub(super) fn json_response(
    body: axum::body::Body,
    cursor: Option<(&'static str, HeaderValue)>,
) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some((name, value)) = cursor {
        resp.headers_mut().insert(name, value);
    }
    resp
}

/// A page of `GET /reports` holds at most this many bytes of reports (and
/// always at least one report); `X-CC-Next-Before` leads to the rest.
pub const MAX_PAGE_BYTES: u64 = 8 << 20;
/// A page is read from the store and sent in pieces of about this size, so
/// a request holds about two pieces in memory whatever the page's size.
pub(super) const PIECE_BYTES: u64 = 1 << 20;

/// Cuts `rows` (id, size; newest first; up to `limit + 1`) into a page of
/// at most `limit` rows and `max_bytes` (at least one row), then into
/// pieces of about `piece` bytes. Returns the pieces as id ranges (high,
/// low) and the cursor for the next page if rows remain.
pub(super) fn paginate<K: Clone>(
    rows: &[(K, u64)],
    limit: usize,
    max_bytes: u64,
    piece: u64,
) -> (Vec<(K, K)>, Option<K>) {
    let mut pieces: Vec<(K, K)> = Vec::new();
    let (mut page_bytes, mut piece_bytes) = (0u64, 0u64);
    let mut taken = 0usize;
    for (id, size) in rows.iter().take(limit) {
        let (id, size) = (id.clone(), *size);
        if taken > 0 && page_bytes.saturating_add(size) > max_bytes {
            break;
        }
        page_bytes = page_bytes.saturating_add(size);
        match pieces.last_mut() {
            Some(last) if piece_bytes.saturating_add(size) <= piece => {
                last.1 = id;
                piece_bytes += size;
            }
            _ => {
                pieces.push((id.clone(), id));
                piece_bytes = size;
            }
        }
        taken += 1;
    }
    let next = if rows.len() > taken {
        pieces.last().map(|p| p.1.clone())
    } else {
        None
    };
    (pieces, next)
}

#[cfg(test)]
mod tests {
    use super::paginate;

    /// Pages stop at the row limit or the byte budget, whichever comes
    /// first, but always hold one row; pieces stay within their size; the
    /// cursor is the last id sent, and only when rows remain.
    #[test]
    fn pages_are_cut_by_rows_and_by_bytes() {
        let rows: Vec<(i64, u64)> = (1..=6).rev().map(|id| (id, 10)).collect();
        // Rows first: 3 of 6, pieces of 20 bytes.
        assert_eq!(
            paginate(&rows, 3, 1000, 20),
            (vec![(6, 5), (4, 4)], Some(4))
        );
        // Bytes first: 30 bytes exactly fit 3 rows; 31 do not fit a 4th.
        assert_eq!(paginate(&rows, 6, 30, 100), (vec![(6, 4)], Some(4)));
        assert_eq!(paginate(&rows, 6, 39, 100), (vec![(6, 4)], Some(4)));
        assert_eq!(paginate(&rows, 6, 40, 100), (vec![(6, 3)], Some(3)));
        // Everything fits: no cursor. limit + 1 rows read means one more.
        assert_eq!(paginate(&rows, 6, 1000, 1000), (vec![(6, 1)], None));
        assert_eq!(paginate(&rows, 5, 1000, 1000), (vec![(6, 2)], Some(2)));
        // A row bigger than the budget still goes, alone.
        let big = [(9, 500), (8, 1)];
        assert_eq!(paginate(&big, 10, 100, 100), (vec![(9, 9)], Some(9)));
        // A piece exactly full, then a new one.
        assert_eq!(paginate(&rows, 6, 1000, 30), (vec![(6, 4), (3, 1)], None));
        assert_eq!(paginate::<i64>(&[], 10, 100, 100), (vec![], None));
        // Keys of any kind: hostnames, ascending.
        let hosts = [
            ("a".to_owned(), 10),
            ("b".to_owned(), 10),
            ("c".to_owned(), 10),
        ];
        assert_eq!(
            paginate(&hosts, 2, 1000, 1000),
            (vec![("a".to_owned(), "b".to_owned())], Some("b".to_owned()))
        );
    }
}

//! The requests the store makes: reads (with a `ReadRows` decoder of its own), one
//! `CheckAndMutateRow` per append, and `MutateRow`s, each bounded by the operation timeout.

use std::time::Duration;

use bigtable_rs::bigtable::BigTable;
use bigtable_rs::google::bigtable::v2::{
    CheckAndMutateRowRequest, MutateRowRequest, Mutation, ReadRowsRequest, ReadRowsResponse,
    RowFilter, RowSet, mutation, read_rows_response::cell_chunk::RowStatus,
};
use tonic::metadata::MetadataValue;

use crate::error::CallError;

/// The largest gRPC message the store accepts: a `ReadRows` reply may carry many events (tonic's
/// default is 4 MiB).
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// One cell of a row, as read (timestamps are always 0 and labels unused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cell {
    pub(crate) family: String,
    pub(crate) qualifier: Vec<u8>,
    pub(crate) value: Vec<u8>,
}

/// One row, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    pub(crate) key: Vec<u8>,
    pub(crate) cells: Vec<Cell>,
}

/// The data API of one table.
#[derive(Clone)]
pub(crate) struct Client {
    bigtable: BigTable,
    table_name: String,
    /// `x-goog-request-params`, which routes every request of the table.
    routing: MetadataValue<tonic::metadata::Ascii>,
    timeout: Duration,
}

impl Client {
    pub(crate) fn new(
        mut connection: bigtable_rs::bigtable::BigTableConnection,
        table: &str,
        timeout: Duration,
    ) -> Result<Self, CallError> {
        connection.configure_inner_client(|client| {
            client
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        });
        let bigtable = connection.client();
        let table_name = bigtable.get_full_table_name(table);
        // Every part of the name is `[A-Za-z0-9_.-]` (validated), so only `/` needs escaping.
        let routing = format!("table_name={}", table_name.replace('/', "%2F"))
            .parse()
            .map_err(|error| CallError::NotSent(Box::new(error)))?;
        Ok(Self {
            bigtable,
            table_name,
            routing,
            timeout,
        })
    }

    /// Runs `request` within the operation timeout.
    async fn timed<T>(
        &self,
        request: impl Future<Output = Result<T, CallError>>,
    ) -> Result<T, CallError> {
        tokio::time::timeout(self.timeout, request)
            .await
            .unwrap_or(Err(CallError::Timeout(self.timeout)))
    }

    /// The rows of `rows` that pass `filter`, at most `limit` (0: no limit), in key order. A
    /// read that fails on a broken connection is sent once more. The operation timeout bounds
    /// the wait for the first reply and between replies, not the whole stream: a long stream
    /// row takes longer to send than any one request should.
    pub(crate) async fn read_rows(
        &self,
        rows: RowSet,
        filter: RowFilter,
        limit: i64,
    ) -> Result<Vec<Row>, CallError> {
        let request = ReadRowsRequest {
            table_name: self.table_name.clone(),
            rows: Some(rows),
            filter: Some(filter),
            rows_limit: limit,
            ..ReadRowsRequest::default()
        };
        match self.read_once(request.clone()).await {
            Err(error) if error.transient() => self.read_once(request).await,
            result => result,
        }
    }

    async fn read_once(&self, request: ReadRowsRequest) -> Result<Vec<Row>, CallError> {
        let mut request = tonic::Request::new(request);
        request
            .metadata_mut()
            .insert("x-goog-request-params", self.routing.clone());
        let mut client = self.bigtable.clone();
        let mut stream = self
            .timed(async {
                client
                    .get_client()
                    .read_rows(request)
                    .await
                    .map_err(CallError::Status)
            })
            .await?
            .into_inner();
        let mut decoder = Decoder::default();
        while let Some(response) = self
            .timed(async { stream.message().await.map_err(CallError::Status) })
            .await?
        {
            decoder.push(response)?;
        }
        decoder.finish()
    }

    /// Applies `mutations` to row `key` if `predicate` matches it (`on_match`) or if it does not
    /// (`!on_match`), atomically; returns whether it matched. Sent once, never retried: a
    /// second copy would see the first one's writes.
    pub(crate) async fn check_and_mutate(
        &self,
        key: Vec<u8>,
        predicate: RowFilter,
        on_match: bool,
        mutations: Vec<Mutation>,
    ) -> Result<bool, CallError> {
        let (true_mutations, false_mutations) = if on_match {
            (mutations, Vec::new())
        } else {
            (Vec::new(), mutations)
        };
        let request = CheckAndMutateRowRequest {
            table_name: self.table_name.clone(),
            row_key: key,
            predicate_filter: Some(predicate),
            true_mutations,
            false_mutations,
            ..CheckAndMutateRowRequest::default()
        };
        let mut bigtable = self.bigtable.clone();
        self.timed(async move {
            let response = bigtable.check_and_mutate_row(request).await?;
            Ok(response.predicate_matched)
        })
        .await
    }

    /// Applies `mutations` to row `key` atomically. Only for writes whose repetition is
    /// harmless (every cell has an explicit timestamp): one that fails on a broken connection
    /// is sent once more.
    pub(crate) async fn mutate_row(
        &self,
        key: Vec<u8>,
        mutations: Vec<Mutation>,
    ) -> Result<(), CallError> {
        let request = MutateRowRequest {
            table_name: self.table_name.clone(),
            row_key: key,
            mutations,
            ..MutateRowRequest::default()
        };
        let send = |request: MutateRowRequest| {
            let mut bigtable = self.bigtable.clone();
            self.timed(async move {
                bigtable.mutate_row(request).await?;
                Ok(())
            })
        };
        match send(request.clone()).await {
            Err(error) if error.transient() => send(request).await,
            result => result,
        }
    }
}

/// A cell set at timestamp 0: one version per column, replaced by the next write to it.
pub(crate) fn set_cell(family: &str, qualifier: Vec<u8>, value: Vec<u8>) -> Mutation {
    Mutation {
        mutation: Some(mutation::Mutation::SetCell(mutation::SetCell {
            family_name: family.to_owned(),
            column_qualifier: qualifier,
            timestamp_micros: 0,
            value,
        })),
    }
}

/// Deletes the whole row.
pub(crate) fn delete_row() -> Mutation {
    Mutation {
        mutation: Some(mutation::Mutation::DeleteFromRow(
            mutation::DeleteFromRow {},
        )),
    }
}

/// Merges the chunks of a `ReadRows` stream into rows. A row may span several messages, and
/// a cell several chunks (`bigtable_rs`'s own decoder assumes neither).
#[derive(Default)]
struct Decoder {
    rows: Vec<Row>,
    /// The row being read, if any.
    key: Option<Vec<u8>>,
    cells: Vec<Cell>,
    /// The family and qualifier of the current cell (a chunk repeats them only when they
    /// change).
    family: Option<String>,
    qualifier: Option<Vec<u8>>,
    /// The value of a cell split over several chunks, so far.
    value: Vec<u8>,
    /// Whether `value` holds part of a cell.
    in_cell: bool,
}

impl Decoder {
    fn push(&mut self, response: ReadRowsResponse) -> Result<(), CallError> {
        let bad = |what: &str| Err(CallError::Reply(what.to_owned()));
        for chunk in response.chunks {
            if !chunk.row_key.is_empty() {
                if self.key.is_some() && self.key.as_ref() != Some(&chunk.row_key) {
                    return bad("a new row began before the previous one was committed");
                }
                self.key = Some(chunk.row_key);
            } else if self.key.is_none() {
                return bad("a chunk without a row key began a row");
            }
            if let Some(family) = chunk.family_name {
                self.family = Some(family);
            }
            if let Some(qualifier) = chunk.qualifier {
                self.qualifier = Some(qualifier);
            }
            self.value.extend_from_slice(&chunk.value);
            self.in_cell = chunk.value_size > 0;
            if !self.in_cell {
                let (Some(family), Some(qualifier)) = (&self.family, &self.qualifier) else {
                    return bad("a cell without family or qualifier");
                };
                self.cells.push(Cell {
                    family: family.clone(),
                    qualifier: qualifier.clone(),
                    value: std::mem::take(&mut self.value),
                });
            }
            match chunk.row_status {
                Some(RowStatus::CommitRow(true)) => {
                    if self.in_cell {
                        return bad("a row committed in the middle of a cell");
                    }
                    let key = self.key.take().unwrap_or_default();
                    self.rows.push(Row {
                        key,
                        cells: std::mem::take(&mut self.cells),
                    });
                    self.family = None;
                    self.qualifier = None;
                }
                Some(RowStatus::ResetRow(true)) => {
                    self.key = None;
                    self.cells.clear();
                    self.value.clear();
                    self.in_cell = false;
                    self.family = None;
                    self.qualifier = None;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<Vec<Row>, CallError> {
        if self.key.is_some() || self.in_cell {
            return Err(CallError::Reply(
                "the stream ended in the middle of a row".into(),
            ));
        }
        Ok(self.rows)
    }
}

#[cfg(test)]
mod tests {
    use bigtable_rs::google::bigtable::v2::read_rows_response::CellChunk;

    use super::*;

    fn chunk(key: &[u8], qualifier: Option<&[u8]>, value: &[u8], size: i32) -> CellChunk {
        CellChunk {
            row_key: key.to_vec(),
            family_name: qualifier.map(|_| "e".to_owned()),
            qualifier: qualifier.map(<[u8]>::to_vec),
            value: value.to_vec(),
            value_size: size,
            ..CellChunk::default()
        }
    }

    fn commit(mut chunk: CellChunk) -> CellChunk {
        chunk.row_status = Some(RowStatus::CommitRow(true));
        chunk
    }

    #[test]
    fn rows_and_cells_may_span_messages() {
        let mut decoder = Decoder::default();
        decoder
            .push(ReadRowsResponse {
                chunks: vec![
                    chunk(b"a", Some(b"1"), b"x", 0),
                    chunk(b"", Some(b"2"), b"he", 5),
                ],
                ..ReadRowsResponse::default()
            })
            .unwrap();
        decoder
            .push(ReadRowsResponse {
                chunks: vec![
                    commit(chunk(b"", None, b"llo", 0)),
                    commit(chunk(b"b", Some(b"1"), b"y", 0)),
                ],
                ..ReadRowsResponse::default()
            })
            .unwrap();
        let rows = decoder.finish().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].key, b"a");
        let values: Vec<_> = rows[0].cells.iter().map(|c| c.value.clone()).collect();
        assert_eq!(values, [b"x".to_vec(), b"hello".to_vec()]);
        assert_eq!(rows[0].cells[1].qualifier, b"2");
        assert_eq!(rows[1].cells[0].value, b"y");
    }

    #[test]
    fn an_unfinished_row_is_an_error() {
        let mut decoder = Decoder::default();
        decoder
            .push(ReadRowsResponse {
                chunks: vec![chunk(b"a", Some(b"1"), b"x", 0)],
                ..ReadRowsResponse::default()
            })
            .unwrap();
        assert!(decoder.finish().is_err());
    }
}

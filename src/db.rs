//! SQL run by the API: statements prepared once per backend and kept, and the helpers that
//! read their results.
//!
//! Every statement qualifies the objects it names and runs under a pinned
//! `search_path = pg_catalog, pg_temp` (`definer::pin_search_path`), so neither its plan nor a
//! replan resolves a name or an operator to a caller's object.

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{self, PgOid};
use pgrx::spi::{OwnedPreparedStatement, Query, SpiClient, SpiTupleTable};
use pgrx::{FromDatum, IntoDatum};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

pub const UUID: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::UUIDOID);
pub const TEXT: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::TEXTOID);
pub const BYTEA: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::BYTEAOID);
pub const JSONB: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::JSONBOID);
pub const INTERVAL: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::INTERVALOID);
pub const INT4: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::INT4OID);
pub const INT8: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::INT8OID);
pub const TIMESTAMPTZ: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::TIMESTAMPTZOID);
pub const BOOL: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::BOOLOID);
pub const TID_ARRAY: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::TIDARRAYOID);

/// One statement of the API, planned on first use in a backend and then reused.
pub struct Statement {
    pub sql: &'static str,
    pub args: &'static [PgOid],
    /// Statements of VOLATILE functions take a fresh snapshot and see earlier commands of the
    /// transaction; those of STABLE functions read within the calling query's snapshot.
    pub volatile: bool,
}

thread_local! {
    static PLANS: RefCell<HashMap<usize, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

impl Statement {
    /// A statement of a VOLATILE function.
    pub const fn new(sql: &'static str, args: &'static [PgOid]) -> Self {
        Self { sql, args, volatile: true }
    }

    /// A read-only statement of a STABLE function.
    pub const fn stable(sql: &'static str, args: &'static [PgOid]) -> Self {
        Self { sql, args, volatile: false }
    }

    fn plan(&'static self, client: &SpiClient<'_>) -> Rc<OwnedPreparedStatement> {
        let key = self as *const Statement as usize;
        if let Some(plan) = PLANS.with_borrow(|plans| plans.get(&key).cloned()) {
            return plan;
        }
        let prepared = if self.volatile {
            client.prepare_mut(self.sql, self.args)
        } else {
            client.prepare(self.sql, self.args)
        };
        let plan = Rc::new(prepared.unwrap_or_else(|e| panic!("preparing {:?}: {e}", self.sql)).keep());
        PLANS.with_borrow_mut(|plans| plans.insert(key, plan.clone()));
        plan
    }

    /// Runs the statement; iterate the result for its rows.
    pub fn rows<'conn>(
        &'static self,
        client: &SpiClient<'conn>,
        args: &[DatumWithOid<'_>],
    ) -> SpiTupleTable<'conn> {
        crate::definer::pin_search_path();
        let plan = self.plan(client);
        (&*plan).execute(client, None, args).unwrap_or_else(|e| panic!("running {:?}: {e}", self.sql))
    }

    /// Runs a statement that yields at most one row, and returns the result positioned on it.
    pub fn one<'conn>(
        &'static self,
        client: &SpiClient<'conn>,
        args: &[DatumWithOid<'_>],
    ) -> Option<SpiTupleTable<'conn>> {
        let table = self.rows(client, args);
        (!table.is_empty()).then(|| table.first())
    }

    /// Runs the statement and calls `f` with the result positioned on each row in turn; returns
    /// how many rows there were.
    pub fn each<'conn>(
        &'static self,
        client: &SpiClient<'conn>,
        args: &[DatumWithOid<'_>],
        mut f: impl FnMut(&SpiTupleTable<'conn>),
    ) -> usize {
        let mut table = self.rows(client, args);
        let mut rows = 0;
        // Advancing the iterator moves the table's position to the row it yields.
        while table.next().is_some() {
            f(&table);
            rows += 1;
        }
        rows
    }

    /// Runs a statement for its effect; returns how many rows it affected.
    pub fn count(&'static self, client: &SpiClient<'_>, args: &[DatumWithOid<'_>]) -> usize {
        self.rows(client, args).len()
    }
}

/// Column access on a result positioned on a row.
pub trait Columns {
    fn datum(&self, ordinal: usize) -> Option<pg_sys::Datum>;

    /// Column `ordinal` (1-based), copied out of SPI memory.
    fn col<T: FromDatum + IntoDatum>(&self, ordinal: usize) -> Option<T>;

    /// Column `ordinal` as a raw varlena datum moved out of SPI's memory into the caller's,
    /// so it outlives the SPI connection and can be returned as is.
    fn varlena(&self, ordinal: usize) -> Option<pg_sys::Datum> {
        // SAFETY: a varlena datum of this row, copied while SPI is still connected.
        self.datum(ordinal).map(|datum| unsafe { pg_sys::SPI_datumTransfer(datum, false, -1) })
    }
}

impl Columns for SpiTupleTable<'_> {
    fn datum(&self, ordinal: usize) -> Option<pg_sys::Datum> {
        self.get_datum_by_ordinal(ordinal).unwrap_or_else(|e| panic!("reading column {ordinal}: {e}"))
    }

    fn col<T: FromDatum + IntoDatum>(&self, ordinal: usize) -> Option<T> {
        SpiTupleTable::get(self, ordinal).unwrap_or_else(|e| panic!("reading column {ordinal}: {e}"))
    }
}

/// A datum for a statement argument whose SQL type differs from the Rust type's default.
pub fn arg_as(datum: pg_sys::Datum, oid: PgOid) -> DatumWithOid<'static> {
    // SAFETY: callers pass a datum of the type `oid` names, valid for the call.
    unsafe { DatumWithOid::new(datum, oid.value()) }
}

//! SQL run by the API: statements prepared once per backend and kept, and the helpers that
//! read their results.
//!
//! The functions run as `SECURITY DEFINER` with `search_path = pg_catalog, pg_temp`, and every
//! statement qualifies the objects it names, so a plan never resolves to a caller's object.

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
pub const INET: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::INETOID);
pub const INTERVAL: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::INTERVALOID);
pub const INT4: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::INT4OID);

/// One statement of the API, planned on first use in a backend and then reused.
pub struct Statement {
    pub sql: &'static str,
    pub args: &'static [PgOid],
    /// Writes need a fresh snapshot and command counter; reads run read-only and cheaper.
    pub writes: bool,
}

thread_local! {
    static PLANS: RefCell<HashMap<usize, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

impl Statement {
    pub const fn read(sql: &'static str, args: &'static [PgOid]) -> Self {
        Self { sql, args, writes: false }
    }

    pub const fn write(sql: &'static str, args: &'static [PgOid]) -> Self {
        Self { sql, args, writes: true }
    }

    fn plan(&'static self, client: &SpiClient<'_>) -> Rc<OwnedPreparedStatement> {
        let key = self as *const Statement as usize;
        if let Some(plan) = PLANS.with_borrow(|plans| plans.get(&key).cloned()) {
            return plan;
        }
        let prepared = if self.writes {
            client.prepare_mut(self.sql, self.args)
        } else {
            client.prepare(self.sql, self.args)
        };
        let plan = Rc::new(prepared.unwrap_or_else(|e| panic!("preparing {:?}: {e}", self.sql)).keep());
        PLANS.with_borrow_mut(|plans| plans.insert(key, plan.clone()));
        plan
    }

    /// Runs the statement; the result is positioned on its first row, if any.
    pub fn run<'conn>(
        &'static self,
        client: &SpiClient<'conn>,
        args: &[DatumWithOid<'_>],
    ) -> SpiTupleTable<'conn> {
        let plan = self.plan(client);
        let table =
            (&*plan).execute(client, None, args).unwrap_or_else(|e| panic!("running {:?}: {e}", self.sql));
        table.first()
    }
}

/// Column `ordinal` (1-based) of the current row, copied out of SPI memory.
pub fn get<T: FromDatum + IntoDatum>(table: &SpiTupleTable<'_>, ordinal: usize) -> Option<T> {
    table.get(ordinal).unwrap_or_else(|e| panic!("reading column {ordinal}: {e}"))
}

/// Column `ordinal` of the current row as a raw varlena datum moved out of SPI's memory into the
/// caller's, so it outlives the SPI connection and can be returned as is.
pub fn get_varlena(table: &SpiTupleTable<'_>, ordinal: usize) -> Option<pg_sys::Datum> {
    let datum =
        table.get_datum_by_ordinal(ordinal).unwrap_or_else(|e| panic!("reading column {ordinal}: {e}"))?;
    // SAFETY: a varlena datum of the current row, copied while SPI is still connected.
    Some(unsafe { pg_sys::SPI_datumTransfer(datum, false, -1) })
}

/// A datum for a statement argument whose SQL type differs from the Rust type's default.
pub fn arg_as(datum: pg_sys::Datum, oid: PgOid) -> DatumWithOid<'static> {
    // SAFETY: callers pass a datum of the type `oid` names, valid for the call.
    unsafe { DatumWithOid::new(datum, oid.value()) }
}

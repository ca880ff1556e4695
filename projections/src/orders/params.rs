//! How a batch's column arrays reach Postgres: bound as parameters, or written into the SQL
//! text as array literals.
//!
//! The literal form exists for the live projector. A transaction that writes holds the feed's
//! fence from its first write to its commit, so the projector sends its writes, its checkpoint
//! and `COMMIT` as one simple query, and the fence is then held only while Postgres executes
//! them, never while the service is busy elsewhere. A simple query takes no parameters, hence
//! the literals. They must store exactly what binding stores: the tests below check the
//! quoting and have Postgres compare generated literals with the bound values, and the replay
//! tests compare the live projector's batches with the per-event rows.

use std::fmt::Write as _;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::postgres::{PgArguments, PgHasArrayType};
use sqlx::{Arguments, Encode, Postgres, Type};
use uuid::Uuid;

use crate::error::ProjectionError;

/// Where one statement's arrays go.
pub(super) enum Params {
    /// Bound into these arguments, numbered `$1`, `$2`… in the order they are added.
    Bound(PgArguments),
    /// Written into the statement's text.
    Inline,
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Bound(_) => "Bound",
            Self::Inline => "Inline",
        })
    }
}

/// A value that cannot be written as a literal exactly as binding would store it: the caller
/// binds instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NotInlinable;

impl Params {
    /// Parameters to bind.
    pub(super) fn bound() -> Self {
        Self::Bound(PgArguments::default())
    }

    /// The SQL expression for `values` as a `ty[]` array: a parameter or a literal.
    pub(super) fn array<T>(&mut self, values: &[T], ty: &str) -> Result<String, Unbindable>
    where
        T: Literal + for<'q> Encode<'q, Postgres> + Type<Postgres> + PgHasArrayType,
    {
        match self {
            Self::Inline => array_literal(values)
                .map(|literal| format!("{literal}::{ty}[]"))
                .map_err(Unbindable::NotInlinable),
            Self::Bound(args) => {
                args.add(values).map_err(|e| {
                    Unbindable::Bind(ProjectionError::Handler(format!(
                        "cannot bind a {ty} column: {e}"
                    )))
                })?;
                Ok(format!("${}::{ty}[]", args.len()))
            }
        }
    }

    /// The bound arguments (none for inline statements).
    pub(super) fn into_args(self) -> PgArguments {
        match self {
            Self::Bound(args) => args,
            Self::Inline => PgArguments::default(),
        }
    }
}

/// Why [`Params::array`] gave no expression.
#[derive(Debug)]
pub(super) enum Unbindable {
    /// Only for [`Params::Inline`]: bind instead.
    NotInlinable(NotInlinable),
    /// Binding failed.
    Bind(ProjectionError),
}

impl From<Unbindable> for ProjectionError {
    fn from(e: Unbindable) -> Self {
        match e {
            Unbindable::Bind(e) => e,
            Unbindable::NotInlinable(NotInlinable) => {
                Self::Handler("a value cannot be written as a literal".into())
            }
        }
    }
}

/// `values` as a Postgres array literal in an escape string (`E'{…}'`), whose meaning does not
/// depend on `standard_conforming_strings`.
fn array_literal<T: Literal>(values: &[T]) -> Result<String, NotInlinable> {
    let mut array = String::with_capacity(values.len() * 40 + 2);
    array.push('{');
    for (k, value) in values.iter().enumerate() {
        if k > 0 {
            array.push(',');
        }
        value.element(&mut array)?;
    }
    array.push('}');
    let mut sql = String::with_capacity(array.len() + 4);
    sql.push_str("E'");
    for c in array.chars() {
        match c {
            '\\' => sql.push_str("\\\\"),
            '\'' => sql.push_str("''"),
            c => sql.push(c),
        }
    }
    sql.push('\'');
    Ok(sql)
}

/// A value as one element of an array literal.
pub(super) trait Literal {
    /// Appends the element's text, quoted where it needs to be.
    fn element(&self, out: &mut String) -> Result<(), NotInlinable>;
}

impl Literal for Uuid {
    fn element(&self, out: &mut String) -> Result<(), NotInlinable> {
        write!(out, "{}", self.hyphenated()).map_err(|_| NotInlinable)
    }
}

impl Literal for i32 {
    fn element(&self, out: &mut String) -> Result<(), NotInlinable> {
        write!(out, "{self}").map_err(|_| NotInlinable)
    }
}

impl Literal for i64 {
    fn element(&self, out: &mut String) -> Result<(), NotInlinable> {
        write!(out, "{self}").map_err(|_| NotInlinable)
    }
}

impl Literal for bool {
    fn element(&self, out: &mut String) -> Result<(), NotInlinable> {
        out.push(if *self { 't' } else { 'f' });
        Ok(())
    }
}

impl Literal for String {
    /// Always quoted (so that `NULL`, an empty string or one with spaces stays a string), with
    /// `"` and `\` escaped. A NUL byte would end the simple query's text early, and Postgres
    /// text cannot hold one anyway: such a value is bound, and refused there.
    fn element(&self, out: &mut String) -> Result<(), NotInlinable> {
        if self.contains('\0') {
            return Err(NotInlinable);
        }
        out.push('"');
        for c in self.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        Ok(())
    }
}

impl Literal for DateTime<Utc> {
    /// The instant as sqlx binds it: whole microseconds since 2000-01-01, the nanoseconds below
    /// them cut toward that epoch (Postgres itself would round a longer fraction instead). Years
    /// outside 1–9999 would need `BC` or more digits than this format has: bound instead.
    fn element(&self, out: &mut String) -> Result<(), NotInlinable> {
        let epoch = DateTime::<Utc>::from_timestamp(946_684_800, 0).ok_or(NotInlinable)?;
        let micros = (*self - epoch).num_microseconds().ok_or(NotInlinable)?;
        let stored = epoch
            .checked_add_signed(TimeDelta::microseconds(micros))
            .ok_or(NotInlinable)?;
        if !(1..=9999).contains(&chrono::Datelike::year(&stored)) {
            return Err(NotInlinable);
        }
        write!(out, "\"{}\"", stored.format("%Y-%m-%dT%H:%M:%S%.6f+00:00"))
            .map_err(|_| NotInlinable)
    }
}

impl<T: Literal> Literal for Option<T> {
    fn element(&self, out: &mut String) -> Result<(), NotInlinable> {
        match self {
            Some(value) => value.element(out),
            None => {
                out.push_str("NULL");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;

    use super::*;

    fn literal<T: Literal>(values: &[T]) -> String {
        array_literal(values).expect("inlinable")
    }

    #[test]
    fn strings_are_quoted_and_escaped_for_the_array_then_for_the_escape_string() {
        let values = vec![
            "plain".to_owned(),
            String::new(),
            "NULL".into(),
            "a \"quoted\", {braced} one".into(),
            "back\\slash and 'apostrophe'".into(),
            "$$ dollar $q$ é ✓".into(),
        ];
        assert_eq!(
            literal(&values),
            r#"E'{"plain","","NULL","a \\"quoted\\", {braced} one","back\\\\slash and ''apostrophe''","$$ dollar $q$ é ✓"}'"#
        );
    }

    #[test]
    fn none_is_an_unquoted_null_and_scalars_are_bare() {
        assert_eq!(literal(&[Some("x".to_owned()), None]), r#"E'{"x",NULL}'"#);
        assert_eq!(literal(&[1_i64, -2]), "E'{1,-2}'");
        assert_eq!(literal(&[true, false]), "E'{t,f}'");
        assert_eq!(literal::<i32>(&[]), "E'{}'");
        assert_eq!(
            literal(&[Uuid::from_u128(1)]),
            "E'{00000000-0000-0000-0000-000000000001}'"
        );
    }

    #[test]
    fn timestamps_keep_whole_microseconds_cut_as_binding_cuts_them() {
        let at = |secs, nanos| DateTime::from_timestamp(secs, nanos).expect("in range");
        // After 2000 the cut is a floor; before it, a ceiling (toward 2000-01-01), as sqlx's
        // `num_microseconds` of the negative offset cuts toward zero.
        assert_eq!(
            literal(&[at(1_700_000_000, 123_456_789)]),
            r#"E'{"2023-11-14T22:13:20.123456+00:00"}'"#
        );
        assert_eq!(
            literal(&[at(900_000_000, 999_999_999)]),
            r#"E'{"1998-07-09T16:00:01.000000+00:00"}'"#
        );
        assert_eq!(
            literal(&[at(946_684_799, 999_999_500)]),
            r#"E'{"2000-01-01T00:00:00.000000+00:00"}'"#
        );
        assert_eq!(literal(&[None::<DateTime<Utc>>]), "E'{NULL}'");
    }

    #[test]
    fn values_a_literal_cannot_carry_are_refused() {
        assert_eq!(array_literal(&["a\0b".to_owned()]), Err(NotInlinable));
        let far = DateTime::<Utc>::MAX_UTC;
        assert_eq!(array_literal(&[far]), Err(NotInlinable));
        let bc = DateTime::from_timestamp(-62_200_000_000, 0).expect("in range");
        assert_eq!(array_literal(&[bc]), Err(NotInlinable));
    }

    /// Binds `values` and compares them, in Postgres, with their literal.
    async fn postgres_agrees<T>(conn: &mut sqlx::PgConnection, values: &[T], ty: &str)
    where
        T: Literal + for<'q> Encode<'q, Postgres> + Type<Postgres> + PgHasArrayType + Debug,
    {
        let literal = array_literal(values).expect("inlinable");
        let sql = format!("SELECT $1::{ty}[] IS NOT DISTINCT FROM {literal}::{ty}[]");
        let same: bool = sqlx::query_scalar(&sql)
            .bind(values)
            .fetch_one(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{values:?} as {literal}: {e}"));
        assert!(same, "{values:?} reads back differently from {literal}");
    }

    /// Generated values (arbitrary Unicode, and strings dense in the characters the two levels
    /// of quoting treat specially), bound and written as literals, compared by Postgres itself,
    /// under both settings of `standard_conforming_strings`. Deterministic, so CI reruns the
    /// same cases.
    #[sqlx::test(migrations = false)]
    async fn postgres_reads_every_literal_as_the_bound_value(pool: sqlx::PgPool) {
        use proptest::prelude::*;
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;

        let text = prop_oneof![any::<String>(), "[\\\\\"'{},$ NUL\t\n\r\u{7f}é✓🎟]{0,12}",]
            .prop_filter("Postgres text holds no NUL", |s| !s.contains('\0'));
        let strings = proptest::collection::vec(text.clone(), 0..6);
        let optional = proptest::collection::vec(proptest::option::of(text), 0..6);
        // Years 1 to 9999, any nanosecond.
        let instants = proptest::collection::vec(
            (-62_135_596_800_i64..253_402_300_799, 0_u32..1_000_000_000),
            0..6,
        );
        let mut runner = TestRunner::deterministic();
        let mut conn = pool.acquire().await.expect("a connection");
        for setting in ["on", "off"] {
            sqlx::query(&format!("SET standard_conforming_strings = {setting}"))
                .execute(&mut *conn)
                .await
                .expect("set");
            for _ in 0..48 {
                let s = strings.new_tree(&mut runner).expect("strings").current();
                postgres_agrees(&mut conn, &s, "text").await;
                let o = optional.new_tree(&mut runner).expect("options").current();
                postgres_agrees(&mut conn, &o, "text").await;
                let t: Vec<DateTime<Utc>> = instants
                    .new_tree(&mut runner)
                    .expect("instants")
                    .current()
                    .into_iter()
                    .filter_map(|(secs, nanos)| DateTime::from_timestamp(secs, nanos))
                    .collect();
                postgres_agrees(&mut conn, &t, "timestamptz").await;
            }
        }
        postgres_agrees(&mut conn, &[i64::MIN, 0, i64::MAX], "int8").await;
        postgres_agrees(&mut conn, &[i32::MIN, i32::MAX], "int4").await;
        postgres_agrees(&mut conn, &[true, false], "bool").await;
        postgres_agrees(&mut conn, &[Uuid::nil(), Uuid::max()], "uuid").await;
    }

    #[test]
    fn bound_params_number_their_arrays() {
        let mut p = Params::bound();
        assert_eq!(p.array(&[1_i64], "int8").expect("bind"), "$1::int8[]");
        assert_eq!(p.array(&[true], "bool").expect("bind"), "$2::bool[]");
        assert_eq!(p.into_args().len(), 2);
        let mut inline = Params::Inline;
        assert_eq!(
            inline.array(&[7_i32], "int4").expect("inline"),
            "E'{7}'::int4[]"
        );
        assert_eq!(inline.into_args().len(), 0);
    }
}

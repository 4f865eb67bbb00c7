//! Which view SQL can be kept up to date as records arrive, and the two
//! queries that do it: a *partial* aggregate run over each new chunk of a
//! partition, whose rows are merged into the view's state (one row per
//! group), and a *final* query run over that state at read time, with the
//! view's own projection, `ORDER BY` and `LIMIT`.
//!
//! Supported: `SELECT <grouped expressions and aggregates> FROM <topic>
//! [WHERE ...] GROUP BY <expressions> [ORDER BY ...] [LIMIT ...]`, with
//! `count`, `sum`, `min`, `max` and `avg` (no `DISTINCT`, `FILTER` or
//! window). Grouping expressions are anything over one record (the key, a
//! JSON field, `date_trunc`/`date_bin` of the timestamp); `avg` is kept as
//! a sum and a count.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, OrderByKind,
    SelectItem, SetExpr, Statement, TableFactor, Value, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// How a partial column merges with the state's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    Count,
    Sum,
    Min,
    Max,
}

/// A view that can be maintained incrementally.
#[derive(Debug, Clone)]
pub struct Shape {
    /// The one topic it reads.
    pub topic: String,
    /// Grouping columns (`__g0`, ...) first in the partial rows.
    pub groups: usize,
    /// How each partial column after them merges.
    pub merges: Vec<Merge>,
    /// The partial aggregate, before and after the chunk's predicate.
    partial: (String, String),
    /// The final query's projection and its `ORDER BY ... LIMIT ...`.
    projection: String,
    tail: String,
    /// Whether the view's first column is the topic's key unchanged (so
    /// `?key=` can read one row).
    pub key_first: bool,
}

/// The columns of a topic's table.
const COLUMNS: [&str; 6] = [
    "partition",
    "offset",
    "timestamp",
    "key",
    "value",
    "headers",
];

/// Functions whose value depends on when they run: frozen into the state
/// at the moment a chunk is applied, they would not match the SQL run later.
const VOLATILE: [&str; 9] = [
    "now",
    "current_timestamp",
    "current_date",
    "current_time",
    "localtime",
    "localtimestamp",
    "random",
    "uuid",
    "to_unixtime",
];

/// The table the final query reads.
pub const STATE_TABLE: &str = "strata_view_state";

impl Shape {
    /// The partial aggregate over offsets `from..to` of `partition`.
    pub fn partial_sql(&self, partition: u32, from: u64, to: u64) -> String {
        format!(
            "{}\"partition\" = {partition} AND \"offset\" >= {from} AND \"offset\" < {to}{}",
            self.partial.0, self.partial.1
        )
    }

    /// The final query over [`STATE_TABLE`]; with `key`, only its row.
    pub fn final_sql(&self, key: Option<&str>) -> String {
        let filter = key.map_or(String::new(), |k| {
            format!(" WHERE \"__g0\" = '{}'", k.replace('\'', "''"))
        });
        format!(
            "SELECT {} FROM {STATE_TABLE}{filter}{}",
            self.projection, self.tail
        )
    }
}

/// Why `sql` cannot be maintained incrementally, or its [`Shape`].
/// `output` names the view's columns (as the same SQL planned gives them).
pub fn analyze(sql: &str, output: &[String]) -> Result<Shape, String> {
    let dialect = GenericDialect {};
    let mut statements = Parser::parse_sql(&dialect, sql).map_err(|e| e.to_string())?;
    let (Some(Statement::Query(mut query)), true) = (statements.pop(), statements.is_empty())
    else {
        return Err("it must be one SELECT".into());
    };
    if query.with.is_some() {
        return Err("WITH is not supported".into());
    }
    if query.fetch.is_some() || !query.locks.is_empty() {
        return Err("FETCH and locking clauses are not supported".into());
    }
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Err("UNION, INTERSECT, EXCEPT and VALUES are not supported".into());
    };
    if select.distinct.is_some() {
        return Err("SELECT DISTINCT is not supported".into());
    }
    if select.having.is_some() {
        return Err("HAVING is not supported".into());
    }
    let [from] = select.from.as_slice() else {
        return Err("it must read exactly one topic (no joins, no FROM list)".into());
    };
    if !from.joins.is_empty() {
        return Err("joins are not supported".into());
    }
    let TableFactor::Table {
        name, args: None, ..
    } = &from.relation
    else {
        return Err("it must read a topic, not a subquery or table function".into());
    };
    let topic = match name.0.as_slice() {
        // Unquoted names are lower-cased, as DataFusion does.
        [part] => part
            .as_ident()
            .map(|i| match i.quote_style {
                None => i.value.to_lowercase(),
                Some(_) => i.value.clone(),
            })
            .ok_or("the topic must be a plain name")?,
        _ => return Err("the topic must be a plain name".into()),
    };
    let GroupByExpr::Expressions(grouped, modifiers) = &select.group_by else {
        return Err("GROUP BY ALL is not supported".into());
    };
    if grouped.is_empty() {
        return Err("it needs a GROUP BY (of the key, JSON fields or time buckets)".into());
    }
    if !modifiers.is_empty() {
        return Err("GROUP BY modifiers (ROLLUP, CUBE, ...) are not supported".into());
    }
    // GROUP BY may name a column of the projection by alias or position.
    let projected: Vec<(Option<String>, Expr)> = select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::UnnamedExpr(e) => Ok((None, e.clone())),
            SelectItem::ExprWithAlias { expr, alias } => {
                Ok((Some(alias.value.clone()), expr.clone()))
            }
            _ => Err("SELECT * is not supported: name the columns".to_string()),
        })
        .collect::<Result<_, _>>()?;
    let mut groups = Vec::with_capacity(grouped.len());
    for g in grouped {
        let resolved = match g {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => {
                    let at: usize = n.parse().map_err(|_| format!("GROUP BY {n}"))?;
                    projected
                        .get(at.wrapping_sub(1))
                        .map(|(_, e)| e.clone())
                        .ok_or(format!("GROUP BY {n} is past the projection"))?
                }
                _ => g.clone(),
            },
            // A topic column of that name wins over an alias, as in DataFusion.
            Expr::Identifier(id) if !COLUMNS.contains(&id.value.as_str()) => projected
                .iter()
                .find(|(alias, _)| alias.as_deref() == Some(id.value.as_str()))
                .map_or_else(|| g.clone(), |(_, e)| e.clone()),
            _ => g.clone(),
        };
        groups.push(resolved.to_string());
    }
    for e in grouped.iter().chain(select.selection.as_ref()) {
        if let ControlFlow::Break(why) = e.clone().visit(&mut Checker) {
            return Err(why);
        }
    }
    let mut rewriter = Rewriter {
        groups: groups.clone(),
        aliases: projected
            .iter()
            .filter_map(|(alias, e)| {
                let i = groups.iter().position(|g| *g == e.to_string())?;
                Some((alias.clone()?, i))
            })
            .collect(),
        partials: Vec::new(),
        merges: Vec::new(),
        outputs: Vec::new(),
    };
    let mut projection = Vec::with_capacity(projected.len());
    for (i, (_, expr)) in projected.iter().enumerate() {
        let name = output.get(i).cloned().unwrap_or_else(|| expr.to_string());
        let mut expr = expr.clone();
        if let ControlFlow::Break(why) = expr.visit(&mut rewriter) {
            return Err(why);
        }
        projection.push(format!("{expr} AS {}", quote(&name)));
    }
    let key_first = groups[0] == "key"
        && projected
            .first()
            .is_some_and(|(_, e)| e.to_string() == "key")
        && output.first().is_some_and(|n| n == "key");
    rewriter.outputs = output.to_vec();
    let mut tail = String::new();
    if let Some(order) = query.order_by.as_mut() {
        let OrderByKind::Expressions(items) = &mut order.kind else {
            return Err("ORDER BY ALL is not supported".into());
        };
        for item in items.iter_mut() {
            if let ControlFlow::Break(why) = item.expr.visit(&mut rewriter) {
                return Err(why);
            }
        }
        tail = format!(" {order}");
    }
    if let Some(limit) = &query.limit_clause {
        tail.push_str(&limit.to_string());
    }
    let where_clause = select
        .selection
        .as_ref()
        .map_or(String::new(), |w| format!("({w}) AND "));
    let group_list = groups.join(", ");
    let mut items: Vec<String> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| format!("{g} AS \"__g{i}\""))
        .collect();
    items.extend(rewriter.partials);
    Ok(Shape {
        partial: (
            format!(
                "SELECT {} FROM {} WHERE {where_clause}",
                items.join(", "),
                quote(&topic)
            ),
            format!(" GROUP BY {group_list}"),
        ),
        topic,
        groups: groups.len(),
        merges: rewriter.merges,
        projection: projection.join(", "),
        tail,
        key_first,
    })
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Rewrites expressions of the view's projection and `ORDER BY` into
/// expressions over the state: grouped expressions become `__g<i>`,
/// aggregates their finalizers over partial columns `__p<j>`.
struct Rewriter {
    groups: Vec<String>,
    /// Projection aliases of grouped expressions.
    aliases: Vec<(String, usize)>,
    /// The partial aggregate's columns, and how each merges.
    partials: Vec<String>,
    merges: Vec<Merge>,
    /// The view's column names (an `ORDER BY` may name one).
    outputs: Vec<String>,
}

impl Rewriter {
    fn partial(&mut self, function: &str, arg: &str, merge: Merge) -> String {
        let column = format!("__p{}", self.partials.len());
        self.partials
            .push(format!("{function}({arg}) AS \"{column}\""));
        self.merges.push(merge);
        format!("\"{column}\"")
    }

    /// The finalizer of aggregate call `f`, or why it is not supported.
    fn aggregate(
        &mut self,
        f: &datafusion::sql::sqlparser::ast::Function,
    ) -> Result<Option<Expr>, String> {
        let name = f.name.to_string().to_ascii_lowercase();
        if !matches!(name.as_str(), "count" | "sum" | "min" | "max" | "avg") {
            return Ok(None);
        }
        if f.over.is_some() || f.filter.is_some() || !f.within_group.is_empty() {
            return Err(format!(
                "{name}() with OVER, FILTER or WITHIN GROUP is not supported"
            ));
        }
        let FunctionArguments::List(list) = &f.args else {
            return Err(format!("{name}() needs one argument"));
        };
        if list.duplicate_treatment.is_some() || !list.clauses.is_empty() {
            return Err(format!("{name}(DISTINCT ...) is not supported"));
        }
        let [FunctionArg::Unnamed(arg)] = list.args.as_slice() else {
            return Err(format!("{name}() needs exactly one argument"));
        };
        let arg = match arg {
            FunctionArgExpr::Wildcard if name == "count" => "*".to_string(),
            FunctionArgExpr::Expr(e) => e.to_string(),
            _ => return Err(format!("{name}() of a wildcard is not supported")),
        };
        let text = match name.as_str() {
            "count" => self.partial("count", &arg, Merge::Count),
            "sum" => self.partial("sum", &arg, Merge::Sum),
            "min" => self.partial("min", &arg, Merge::Min),
            "max" => self.partial("max", &arg, Merge::Max),
            _ => {
                let sum = self.partial("sum", &arg, Merge::Sum);
                let count = self.partial("count", &arg, Merge::Count);
                format!("(CAST({sum} AS DOUBLE) / CAST({count} AS DOUBLE))")
            }
        };
        let dialect = GenericDialect {};
        let parsed = Parser::new(&dialect)
            .try_with_sql(&text)
            .and_then(|mut p| p.parse_expr())
            .map_err(|e| e.to_string())?;
        Ok(Some(parsed))
    }
}

impl VisitorMut for Rewriter {
    type Break = String;

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<String> {
        if let Expr::Identifier(id) = expr
            && self.outputs.contains(&id.value)
        {
            // An ORDER BY naming an output column means that column, as in
            // DataFusion (outputs are set only for ORDER BY).
            return ControlFlow::Continue(());
        }
        let text = expr.to_string();
        if let Some(i) = self.groups.iter().position(|g| *g == text) {
            *expr = Expr::Identifier(Ident::with_quote('"', format!("__g{i}")));
            return ControlFlow::Continue(());
        }
        match expr {
            Expr::Function(f) => match self.aggregate(f) {
                Ok(Some(finalizer)) => *expr = finalizer,
                Ok(None) => return Checker.pre_visit_expr(expr),
                Err(why) => return ControlFlow::Break(why),
            },
            Expr::Identifier(id) if !id.value.starts_with("__") => {
                if let Some((_, i)) = self.aliases.iter().find(|(a, _)| *a == id.value) {
                    *expr = Expr::Identifier(Ident::with_quote('"', format!("__g{i}")));
                } else if !self.outputs.contains(&id.value) {
                    return ControlFlow::Break(format!(
                        "column {id} is neither in GROUP BY nor inside an aggregate"
                    ));
                }
            }
            Expr::CompoundIdentifier(parts) => {
                return ControlFlow::Break(format!(
                    "column {} is neither in GROUP BY nor inside an aggregate",
                    parts
                        .iter()
                        .map(|p| p.value.as_str())
                        .collect::<Vec<_>>()
                        .join(".")
                ));
            }
            _ => return Checker.pre_visit_expr(expr),
        }
        ControlFlow::Continue(())
    }
}

/// Refuses what cannot be applied a chunk at a time anywhere in a view:
/// subqueries (another table's contents, frozen), window functions and
/// functions of the time of evaluation.
struct Checker;

impl VisitorMut for Checker {
    type Break = String;

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<String> {
        match expr {
            Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => {
                ControlFlow::Break("subqueries are not supported".into())
            }
            Expr::Function(f) if f.over.is_some() => {
                ControlFlow::Break(format!("window function {} is not supported", f.name))
            }
            Expr::Function(f)
                if VOLATILE.contains(&f.name.to_string().to_ascii_lowercase().as_str()) =>
            {
                ControlFlow::Break(format!(
                    "{}() is not supported: a kept view cannot depend on when it is computed",
                    f.name
                ))
            }
            _ => ControlFlow::Continue(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn group_by_key_with_aggregates() {
        let shape = analyze(
            "SELECT key, count(*) AS n, avg(json_get_int(value, 'n')) AS mean FROM t WHERE json_get_int(value, 'n') > 3 GROUP BY key ORDER BY n DESC, key LIMIT 5",
            &names(&["key", "n", "mean"]),
        )
        .unwrap();
        assert_eq!(shape.topic, "t");
        assert_eq!(shape.merges, [Merge::Count, Merge::Sum, Merge::Count]);
        assert!(shape.key_first);
        let partial = shape.partial_sql(2, 10, 20);
        assert!(partial.contains("key AS \"__g0\""), "{partial}");
        assert!(
            partial.contains("\"partition\" = 2 AND \"offset\" >= 10 AND \"offset\" < 20"),
            "{partial}"
        );
        assert!(
            partial.contains("(json_get_int(value, 'n') > 3) AND"),
            "{partial}"
        );
        let read = shape.final_sql(Some("o'k"));
        assert!(read.contains("WHERE \"__g0\" = 'o''k'"), "{read}");
        assert!(read.ends_with("ORDER BY n DESC, key LIMIT 5"), "{read}");
    }

    #[test]
    fn aliases_and_positions_name_grouped_expressions() {
        let shape = analyze(
            "SELECT date_trunc('hour', \"timestamp\") AS hour, json_get_str(value, 'page') AS page, sum(1) AS n FROM clicks GROUP BY 1, page",
            &names(&["hour", "page", "n"]),
        )
        .unwrap();
        assert_eq!(shape.groups, 2);
        assert!(!shape.key_first);
        assert!(
            shape
                .final_sql(None)
                .starts_with("SELECT \"__g0\" AS \"hour\", \"__g1\" AS \"page\"")
        );
    }

    #[test]
    fn unsupported_shapes_say_what() {
        for (sql, says) in [
            ("SELECT key FROM t", "GROUP BY"),
            (
                "SELECT key, count(DISTINCT value) FROM t GROUP BY key",
                "DISTINCT",
            ),
            ("SELECT key, value FROM t GROUP BY key", "column value"),
            (
                "SELECT key, count(*) FROM t GROUP BY key HAVING count(*) > 1",
                "HAVING",
            ),
            (
                "SELECT a.key, count(*) FROM t a JOIN u b ON a.key = b.key GROUP BY a.key",
                "join",
            ),
            ("SELECT * FROM t GROUP BY key", "SELECT *"),
            (
                "SELECT key, row_number() OVER () FROM t GROUP BY key",
                "window",
            ),
            (
                "SELECT key, median(value) FROM t GROUP BY key",
                "column value",
            ),
            (
                "SELECT key, count(*) FROM t GROUP BY key UNION SELECT key, 1 FROM u GROUP BY key",
                "UNION",
            ),
        ] {
            let why = analyze(sql, &[]).unwrap_err();
            assert!(why.contains(says), "{sql}: {why}");
        }
    }
}

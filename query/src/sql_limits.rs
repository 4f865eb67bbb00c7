//! What one SQL text may ask of the engine before anything is parsed.
//!
//! sqlparser bounds how deep parentheses, function calls, subqueries and
//! prefix operators nest (DataFusion's `sql_parser.recursion_limit`), but it
//! parses a chain of infix operators (`1+1+…+1`, `a OR b OR …`, `x::t::t…`)
//! in a loop, into a tree as deep as the chain is long. Everything after the
//! parser walks that tree recursively (planning, optimising, cloning,
//! comparing, dropping, evaluating), so a 6 KB chain of 3,000 terms
//! overflowed a worker's stack and aborted the whole server.
//!
//! [`check_sql`] bounds the tree's depth from the tokens alone, before any
//! tree exists, so no request can build one the engine cannot walk. The
//! bound is conservative: each infix operator counts one level, the
//! operators of one comma-separated expression add up, and a bracketed part
//! (also `CASE … END`, whose `WHEN`, `THEN` and `ELSE` parts are separate
//! expressions, like the items of a list) adds its own depth plus one to
//! the expression it sits in. The SQL engine
//! runs on threads with [`QUERY_THREAD_STACK`] of stack, measured to walk
//! trees well past [`MAX_EXPRESSION_DEPTH`].

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::error::{QueryError, Result};

/// The longest SQL text a query or a view may have (bytes).
pub const MAX_SQL_BYTES: usize = 1 << 20;

/// How deep operators may chain and nest in one SQL text (see the module
/// documentation for how depth is counted). DataFusion's planning of a
/// tree grows with the square of its depth (each level names its whole
/// subtree): 1,024 levels plan in about 1.5 s on a debug build, 4,096 took
/// 30 s and hundreds of megabytes.
pub const MAX_EXPRESSION_DEPTH: usize = 1024;

/// Stack of each thread that plans or runs SQL: deep enough for trees of
/// [`MAX_EXPRESSION_DEPTH`] with a wide margin. Only the pages a query
/// touches are ever backed by memory.
pub const QUERY_THREAD_STACK: usize = 64 << 20;

/// Refuses SQL that is longer than [`MAX_SQL_BYTES`] or whose expressions
/// chain or nest deeper than [`MAX_EXPRESSION_DEPTH`].
///
/// # Contract
///
/// Runs in time and memory linear in `sql`'s length and never recurses, so
/// it is safe on any input. Text that does not tokenize passes: the parser
/// reports it with its own message.
pub fn check_sql(sql: &str) -> Result<()> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(QueryError::InvalidRequest(format!(
            "the SQL text is {} bytes; the limit is {MAX_SQL_BYTES}",
            sql.len()
        )));
    }
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return Ok(());
    };
    let depth = expression_depth(&tokens);
    if depth > MAX_EXPRESSION_DEPTH {
        return Err(QueryError::InvalidRequest(format!(
            "the SQL chains or nests operators {depth} deep; the limit is \
             {MAX_EXPRESSION_DEPTH} (write long OR chains as IN (...), long sums with sum())"
        )));
    }
    Ok(())
}

/// What opened a level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Opener {
    /// The text itself.
    #[default]
    Text,
    /// `(`, `[` or `{`, closed by its partner.
    Bracket,
    /// `CASE`, closed by `END`; `WHEN`, `THEN` and `ELSE` separate its parts.
    Case,
}

/// One bracketed level of the text being measured.
#[derive(Default)]
struct Level {
    opener: Opener,
    /// Infix operators of the current comma-separated expression.
    operators: usize,
    /// Deepest bracketed part inside the current expression.
    deepest_part: usize,
    /// Deepest expression of this level so far.
    deepest: usize,
    /// Inside a `FROM` list, whose items (like joins) become a plan as deep
    /// as the list is long, so a comma there chains instead of separating.
    in_from: bool,
}

impl Level {
    fn current(&self) -> usize {
        self.operators + self.deepest_part
    }

    fn end_expression(&mut self) {
        self.deepest = self.deepest.max(self.current());
        self.operators = 0;
        self.deepest_part = 0;
    }
}

/// The open brackets at one point of the text, outermost first.
struct Levels {
    /// Never empty: the text's own level is first.
    open: Vec<Level>,
    /// What the enclosing levels add to the innermost one's depth: the sum
    /// of their `current() + 1`, which does not change while a level is not
    /// innermost, so each token costs O(1) however deep the brackets go.
    enclosing: usize,
}

impl Levels {
    fn new() -> Self {
        Self {
            open: vec![Level::default()],
            enclosing: 0,
        }
    }

    fn innermost(&mut self) -> &mut Level {
        let last = self.open.len() - 1;
        &mut self.open[last]
    }

    fn open(&mut self, opener: Opener) {
        self.enclosing += self.innermost().current() + 1;
        self.open.push(Level {
            opener,
            ..Level::default()
        });
    }

    /// Closes the innermost level if `opener` opened it. A closer that
    /// does not match (the parser's to report) closes nothing, so a stray
    /// `)` or `END` can never make the count smaller than the tree.
    fn close(&mut self, opener: Opener) {
        if self.open.len() < 2 || self.innermost().opener != opener {
            return;
        }
        let Some(mut inner) = self.open.pop() else {
            return;
        };
        inner.end_expression();
        let outer = self.innermost();
        let before = outer.current() + 1;
        outer.deepest_part = outer.deepest_part.max(inner.deepest + 1);
        self.enclosing -= before;
    }

    /// The deepest the expression at this point can be.
    fn depth(&mut self) -> usize {
        self.enclosing + self.innermost().current()
    }
}

/// An upper bound of the depth of the expression trees `tokens` parse into.
/// Stops counting once past the limit.
fn expression_depth(tokens: &[Token]) -> usize {
    let mut levels = Levels::new();
    // A word right after `.` is a name (`t.end`), whatever keyword it spells.
    let mut after_period = false;
    for token in tokens {
        if matches!(token, Token::Whitespace(_)) {
            continue;
        }
        let keyword = match token {
            Token::Word(w) if !after_period && w.quote_style.is_none() => w.keyword,
            _ => Keyword::NoKeyword,
        };
        after_period = matches!(token, Token::Period);
        match (token, keyword) {
            (Token::LParen | Token::LBrace, _) => levels.open(Opener::Bracket),
            (Token::LBracket, _) => {
                // A subscript chains like an operator.
                levels.innermost().operators += 1;
                levels.open(Opener::Bracket);
            }
            (Token::RParen | Token::RBracket | Token::RBrace, _) => levels.close(Opener::Bracket),
            (_, Keyword::CASE) => levels.open(Opener::Case),
            (_, Keyword::END) => levels.close(Opener::Case),
            (_, Keyword::WHEN | Keyword::THEN | Keyword::ELSE)
                if levels.innermost().opener == Opener::Case =>
            {
                levels.innermost().end_expression()
            }
            (_, Keyword::FROM) => levels.innermost().in_from = true,
            (
                _,
                Keyword::WHERE
                | Keyword::GROUP
                | Keyword::HAVING
                | Keyword::QUALIFY
                | Keyword::WINDOW
                | Keyword::ORDER
                | Keyword::LIMIT
                | Keyword::SELECT,
            ) => levels.innermost().in_from = false,
            // Set operations and joins chain whole queries into plans as
            // deep as the chain.
            (
                _,
                Keyword::UNION
                | Keyword::INTERSECT
                | Keyword::EXCEPT
                | Keyword::MINUS
                | Keyword::JOIN,
            ) => {
                let level = levels.innermost();
                level.operators += 1;
                level.in_from = false;
            }
            (Token::Comma, _) if levels.innermost().in_from => levels.innermost().operators += 1,
            (Token::Comma | Token::SemiColon, _) => levels.innermost().end_expression(),
            (token, keyword) if chains(token, keyword) => levels.innermost().operators += 1,
            _ => {}
        }
        if levels.depth() > MAX_EXPRESSION_DEPTH {
            return MAX_EXPRESSION_DEPTH + 1;
        }
    }
    // Unclosed brackets and CASEs (a parse error to come) still count.
    while levels.open.len() > 1 {
        let opener = levels.innermost().opener;
        levels.close(opener);
    }
    let text = levels.innermost();
    text.end_expression();
    text.deepest
}

/// Whether `token` can continue an expression as an infix or postfix
/// operator (sqlparser's `get_next_precedence`), counted conservatively:
/// every token that is not a name, a literal or punctuation. `keyword` is
/// the word's keyword when it acts as one.
fn chains(token: &Token, keyword: Keyword) -> bool {
    match token {
        Token::Word(_) => matches!(
            keyword,
            Keyword::OR
                | Keyword::AND
                | Keyword::XOR
                | Keyword::AT
                | Keyword::NOT
                | Keyword::IN
                | Keyword::IS
                | Keyword::NOTNULL
                | Keyword::BETWEEN
                | Keyword::OVERLAPS
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::RLIKE
                | Keyword::REGEXP
                | Keyword::MATCH
                | Keyword::SIMILAR
                | Keyword::MEMBER
                | Keyword::OPERATOR
                | Keyword::DIV
                | Keyword::COLLATE
        ),
        Token::EOF
        | Token::Whitespace(_)
        | Token::Number(..)
        | Token::Char(_)
        | Token::SingleQuotedString(_)
        | Token::DoubleQuotedString(_)
        | Token::NationalStringLiteral(_)
        | Token::EscapedStringLiteral(_)
        | Token::HexStringLiteral(_)
        | Token::Placeholder(_)
        | Token::Comma
        | Token::SemiColon
        | Token::LParen
        | Token::RParen
        | Token::LBracket
        | Token::RBracket
        | Token::LBrace
        | Token::RBrace => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The deepest expression of the tree sqlparser builds from `sql`.
    fn parsed_depth(sql: &str) -> Option<usize> {
        use std::ops::ControlFlow;

        use datafusion::sql::sqlparser::ast::{Expr, Visit, Visitor};
        use datafusion::sql::sqlparser::parser::Parser;

        struct Depth {
            now: usize,
            max: usize,
        }
        impl Visitor for Depth {
            type Break = ();
            fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
                self.now += 1;
                self.max = self.max.max(self.now);
                ControlFlow::Continue(())
            }
            fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
                self.now -= 1;
                ControlFlow::Continue(())
            }
        }
        let statements = Parser::parse_sql(&GenericDialect {}, sql).ok()?;
        let mut depth = Depth { now: 0, max: 0 };
        let _ = statements.visit(&mut depth);
        Some(depth.max)
    }

    /// Expressions built from the shapes that nest or chain, with names
    /// that spell keywords (`s.end`, `"else"`).
    fn expression() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("1".to_string()),
            Just("x".to_string()),
            Just("s.end".to_string()),
            Just("s.else".to_string()),
            Just("\"case\"".to_string()),
            Just("'text'".to_string()),
        ];
        leaf.prop_recursive(6, 400, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 2..40).prop_map(|v| v.join(" + ")),
                proptest::collection::vec(inner.clone(), 2..40).prop_map(|v| v.join(" OR ")),
                inner.clone().prop_map(|e| format!("({e})")),
                inner.clone().prop_map(|e| format!("NOT {e}")),
                inner.clone().prop_map(|e| format!("{e}::int")),
                inner.clone().prop_map(|e| format!("{e} IS NULL")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("f({a}, {b})")),
                (inner.clone(), inner.clone(), inner.clone())
                    .prop_map(|(a, b, c)| format!("CASE WHEN {a} THEN {b} ELSE {c} END")),
                (inner.clone(), inner).prop_map(|(a, b)| format!("{a} IN ({b}, 2, 3)")),
            ]
        })
    }

    /// The count leaves out the leaves themselves (one level). Prefix
    /// constructs it does not count (`INTERVAL`, `EXISTS`, ...) nest only
    /// through the parser's recursion limit; [`expression`] makes none.
    const SLACK: usize = 1;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// The bound holds: the parser's tree is never deeper than counted.
        #[test]
        fn the_count_bounds_the_parsed_depth(
            items in proptest::collection::vec(expression(), 1..4),
            union in proptest::collection::vec(Just(" UNION ALL SELECT 1"), 0..30),
        ) {
            let sql = format!("SELECT {} FROM s{}", items.join(", "), union.concat());
            if let Some(parsed) = parsed_depth(&sql) {
                let counted = depth(&sql);
                prop_assert!(
                    parsed <= counted + SLACK,
                    "parsed {parsed} > counted {counted} for {sql}"
                );
            }
        }

        /// Any text: an answer, never a panic.
        #[test]
        fn any_text_gets_an_answer(text in "\\PC{0,300}") {
            let _ = check_sql(&text);
        }
    }

    #[test]
    fn the_parser_builds_the_generated_shapes() {
        // Guards the property test above from passing on text that never parses.
        let sql = "SELECT CASE WHEN s.else + s.end + \"case\" IS NULL THEN NOT x::int \
                   ELSE f(1, 'text') END, 1 IN (x, 2, 3) FROM s UNION ALL SELECT 1";
        let parsed = parsed_depth(sql).expect("parses");
        assert!(parsed >= 4, "{parsed}");
        assert!(parsed <= depth(sql) + 1);
    }

    #[test]
    fn keywords_used_as_names_do_not_reset_the_count() {
        // `s.else` and `s.end` are names: each `+` still counts.
        for name in ["s.else", "s.end", "s.when", "t.then", "\"else\"", "\"end\""] {
            let chain = vec![name; 3000].join("+");
            for sql in [
                format!("SELECT {chain} FROM s"),
                format!("SELECT CASE WHEN {chain} THEN 1 END FROM s"),
                format!("SELECT CASE WHEN x THEN 1 ELSE {chain} END FROM s"),
            ] {
                let message = check_sql(&sql).unwrap_err().to_string();
                assert!(message.contains("limit"), "{name}: {message}");
            }
        }
        // A stray END or `)` closes nothing it did not open.
        assert_eq!(depth("SELECT (1 + 1 END + 1"), 3);
        assert_eq!(depth("SELECT CASE WHEN 1 + 1) + 1 THEN 1 END"), 3);
    }

    #[test]
    fn from_lists_set_operations_and_joins_chain() {
        let tables: Vec<String> = (0..3000).map(|i| format!("t AS a{i}")).collect();
        assert!(check_sql(&format!("SELECT 1 FROM {}", tables.join(", "))).is_err());
        let unions = "SELECT 1".to_string() + &" UNION ALL SELECT 1".repeat(3000);
        assert!(check_sql(&unions).is_err());
        let joins = format!("SELECT 1 FROM t{}", " JOIN t ON true".repeat(3000));
        assert!(check_sql(&joins).is_err());
        // Ordinary lists after FROM still separate.
        assert_eq!(
            depth("SELECT a, b FROM t WHERE x = 1 GROUP BY a, b ORDER BY a, b"),
            1
        );
        assert_eq!(depth("SELECT a FROM t, u, v"), 2);
    }

    fn depth(sql: &str) -> usize {
        let tokens = Tokenizer::new(&GenericDialect {}, sql).tokenize().unwrap();
        expression_depth(&tokens)
    }

    fn chain(op: &str, terms: usize) -> String {
        vec!["1"; terms].join(op)
    }

    #[test]
    fn a_chain_counts_its_operators() {
        assert_eq!(depth("SELECT 1"), 0);
        assert_eq!(depth(&format!("SELECT {}", chain("+", 101))), 100);
        assert_eq!(depth(&format!("SELECT {}", chain(" OR ", 11))), 10);
    }

    #[test]
    fn commas_separate_expressions() {
        let list = vec!["a + 1"; 5000].join(", ");
        assert_eq!(depth(&format!("SELECT {list} FROM t")), 1);
        let in_list = vec!["1"; 10_000].join(", ");
        // `IN` and the list's brackets; `*` counts too (conservatively).
        assert_eq!(depth(&format!("SELECT * FROM t WHERE k IN ({in_list})")), 3);
    }

    #[test]
    fn brackets_add_their_depth_to_the_expression_around_them() {
        // 2 operators outside, a part of depth 4 + 1 inside.
        assert_eq!(depth("SELECT 1 + (1 + 1 + (1 + 1)) + 1"), 7);
        assert_eq!(depth("SELECT f(1 + 1, 2) * 3"), 3);
        // Unclosed and unmatched brackets are counted, not a panic.
        assert_eq!(depth("SELECT (((1 + 1"), 4);
        assert_eq!(depth("SELECT 1 + 1))) + 1"), 2);
    }

    #[test]
    fn case_parts_are_separate_expressions() {
        let whens: String = (0..5000)
            .map(|i| format!(" WHEN k = {i} THEN {i} + 1"))
            .collect();
        // The CASE level (1) and one `=` or `+` inside it.
        assert_eq!(depth(&format!("SELECT CASE{whens} ELSE 0 END FROM t")), 2);
        let nested = format!(
            "SELECT {}1{}",
            "CASE WHEN a THEN ".repeat(10),
            " END".repeat(10)
        );
        assert_eq!(depth(&nested), 10);
        assert_eq!(depth("SELECT 1 + CASE WHEN a = 1 THEN 2 END + 3"), 4);
    }

    #[test]
    fn the_limit_is_named() {
        let ok = format!("SELECT {}", chain("+", MAX_EXPRESSION_DEPTH + 1));
        check_sql(&ok).unwrap();
        let deep = format!("SELECT {}", chain("+", MAX_EXPRESSION_DEPTH + 2));
        let message = check_sql(&deep).unwrap_err().to_string();
        assert!(
            message.contains(&MAX_EXPRESSION_DEPTH.to_string()),
            "{message}"
        );
        let long = format!("SELECT '{}'", "x".repeat(MAX_SQL_BYTES));
        let message = check_sql(&long).unwrap_err().to_string();
        assert!(message.contains(&MAX_SQL_BYTES.to_string()), "{message}");
    }
}

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

/// One bracketed level of the text being measured.
#[derive(Default)]
struct Level {
    /// Infix operators of the current comma-separated expression.
    operators: usize,
    /// Deepest bracketed part inside the current expression.
    deepest_part: usize,
    /// Deepest expression of this level so far.
    deepest: usize,
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

    fn open(&mut self) {
        self.enclosing += self.innermost().current() + 1;
        self.open.push(Level::default());
    }

    /// Closes the innermost bracket; an unmatched one (the parser's to
    /// report) closes nothing.
    fn close(&mut self) {
        if self.open.len() < 2 {
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
    for token in tokens {
        match token {
            Token::LParen | Token::LBrace => levels.open(),
            Token::Word(w) if w.keyword == Keyword::CASE => levels.open(),
            Token::Word(w) if w.keyword == Keyword::END => levels.close(),
            Token::Word(w)
                if matches!(w.keyword, Keyword::WHEN | Keyword::THEN | Keyword::ELSE) =>
            {
                levels.innermost().end_expression()
            }
            Token::LBracket => {
                // A subscript chains like an operator.
                levels.innermost().operators += 1;
                levels.open();
            }
            Token::RParen | Token::RBracket | Token::RBrace => levels.close(),
            Token::Comma | Token::SemiColon => levels.innermost().end_expression(),
            token if chains(token) => levels.innermost().operators += 1,
            _ => {}
        }
        if levels.depth() > MAX_EXPRESSION_DEPTH {
            return MAX_EXPRESSION_DEPTH + 1;
        }
    }
    // Unclosed brackets (a parse error to come) still count.
    while levels.open.len() > 1 {
        levels.close();
    }
    let text = levels.innermost();
    text.end_expression();
    text.deepest
}

/// Whether `token` can continue an expression as an infix or postfix
/// operator (sqlparser's `get_next_precedence`), counted conservatively:
/// every token that is not a name, a literal or punctuation.
fn chains(token: &Token) -> bool {
    match token {
        Token::Word(word) => matches!(
            word.keyword,
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

    proptest! {
        /// Any text, and text made of SQL's nesting and chaining tokens:
        /// an answer, never a panic, in time linear in the text.
        #[test]
        fn any_text_gets_an_answer(text in "\\PC{0,300}") {
            let _ = check_sql(&text);
        }

        #[test]
        fn sql_shaped_text_gets_an_answer(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("("), Just(")"), Just("["), Just("]"), Just("CASE "), Just(" END"),
                    Just(" WHEN "), Just(" THEN "), Just("+"), Just(" OR "), Just(","),
                    Just("1"), Just("x"), Just("'s'"), Just(" NOT "), Just("::int"),
                ],
                0..3000,
            )
        ) {
            let text = format!("SELECT {}", parts.concat());
            if check_sql(&text).is_ok() {
                prop_assert!(depth(&text) <= MAX_EXPRESSION_DEPTH);
            }
        }
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

//! Redis scripts from `.lua` files. A script is its entry file (what it does, its `KEYS` and
//! `ARGV` named at the top) after the libraries it names: Lua files that define `local`
//! functions and nothing else. A library names the libraries it calls in turn, so a script
//! lists only what it calls itself and can never miss a function a library needs: no function
//! reaches a script unless something names the file that defines it.

use redis::Script;

/// A Lua library: `local function`s in one file.
#[derive(Debug)]
pub struct Lib {
    pub name: &'static str,
    pub source: &'static str,
    /// Libraries its functions call; they come before it.
    pub needs: &'static [&'static Lib],
}

/// The text of a script: `needs` (and what they need, each once, dependencies first), then `main`.
pub fn source(needs: &[&'static Lib], main: &str) -> String {
    fn add(lib: &'static Lib, seen: &mut Vec<&'static str>, out: &mut String) {
        if seen.contains(&lib.name) {
            return;
        }
        for dep in lib.needs {
            add(dep, seen, out);
        }
        seen.push(lib.name);
        out.push_str(lib.source);
        out.push('\n');
    }
    let mut seen = Vec::new();
    let mut out = String::new();
    for lib in needs {
        add(lib, &mut seen, &mut out);
    }
    out.push_str(main);
    out
}

/// A script ready to run: [`source`] of `needs` and `main`.
pub fn script(needs: &[&'static Lib], main: &str) -> Script {
    Script::new(&source(needs, main))
}

/// Redis' clock, read once per script: `now_ms()`.
pub static CLOCK: Lib = Lib {
    name: "clock",
    source: include_str!("lua/clock.lua"),
    needs: &[],
};

/// `rfc3339_ms(ms)`: a timestamp rendered exactly as [`crate::time::rfc3339_ms`] renders it.
pub static RFC3339: Lib = Lib {
    name: "rfc3339",
    source: crate::time::RFC3339_LUA,
    needs: &[],
};

#[cfg(test)]
mod tests {
    use super::*;

    static A: Lib = Lib {
        name: "a",
        source: "-- a",
        needs: &[],
    };
    static B: Lib = Lib {
        name: "b",
        source: "-- b",
        needs: &[&A],
    };
    static C: Lib = Lib {
        name: "c",
        source: "-- c",
        needs: &[&A, &B],
    };

    #[test]
    fn libraries_come_once_each_before_what_needs_them() {
        assert_eq!(source(&[&C, &B], "return 1"), "-- a\n-- b\n-- c\nreturn 1");
        assert_eq!(source(&[], "return 1"), "return 1");
    }
}

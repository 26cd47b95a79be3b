//! A component whose `run` export has the wrong type for the `braid:agent` world.

wit_bindgen::generate!({ world: "not-an-agent", path: "wit" });

struct Wrong;

impl Guest for Wrong {
    fn run(input: String) -> String {
        input
    }
}

export!(Wrong);

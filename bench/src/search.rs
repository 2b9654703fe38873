//! `search`: chat search (`Store::search_chats`, the SQL behind `GET /api/chats?q=`) against
//! a scratch database on the real PostgreSQL. One user gets `--chats` chats of `--messages`
//! messages, other users some more as noise; the text is drawn from a Zipf-like vocabulary (a
//! few words in most messages, most words rare). Then `--queries` searches of mixed kinds
//! (rare, mid and common words, two words, phrases, `or`, `-word`) are timed, and the scratch
//! database is dropped (unless `--keep`, for EXPLAIN).

use clap::Args;
use hdrhistogram::Histogram;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};
use serde_json::{Value, json};
use sluice_api::store::Store;
use sluice_api::store::search::{SearchOrder, SearchRequest};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use uuid::Uuid;

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// A superuser's URL (its database is only used to create and drop the scratch one).
    #[arg(
        long,
        env = "SLUICE_TEST_ADMIN_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/postgres"
    )]
    admin_url: String,
    /// Chats of the searching user.
    #[arg(long, default_value_t = 1_000)]
    chats: u32,
    /// Messages per chat (a user's and an assistant's in turn).
    #[arg(long, default_value_t = 50)]
    messages: u32,
    /// Other users, whose chats (of the same length) the index holds too.
    #[arg(long, default_value_t = 20)]
    noise_users: u32,
    /// Chats of each other user.
    #[arg(long, default_value_t = 100)]
    noise_chats: u32,
    /// Timed searches (after 50 untimed ones).
    #[arg(long, default_value_t = 500)]
    queries: usize,
    /// Searches at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Items per page.
    #[arg(long, default_value_t = 50)]
    limit: u64,
    /// Keep the scratch database (its name is printed) instead of dropping it.
    #[arg(long)]
    keep: bool,
    /// Searches (the first of the same queries) timed again as one of the other users: a small
    /// user must not pay for a big one's plan.
    #[arg(long, default_value_t = 100)]
    small_queries: usize,
    /// Print the slowest searches (kind, query, ordering, time).
    #[arg(long, default_value_t = 10)]
    slowest: usize,
    #[arg(long)]
    json: bool,
}

/// The head of the vocabulary, most frequent first: the word of Zipf rank r is the r-th;
/// rarer ranks are made-up words of syllables (see [`word`]).
const HEAD: &str = "\
     the to and of a in is it you that for on with this be are as can not or have if but your \
     we from by an will at do use so what how which there one all they more when would about \
     some should like also then code function error data file time example value type need \
     way first new other make just only case here into each get may than could because any \
     using does return set list string number user question answer model test run line work \
     help want know see look think good problem result change call name server database query \
     table index rust python javascript memory thread async request response client api key \
     config version build package trip plan recipe chicken garden travel budget music guitar \
     history science physics energy climate health sleep exercise book story poem letter \
     email meeting project team design color image photo camera phone weather city train \
     flight hotel restaurant coffee tea bread cheese wine market price money bank loan tax \
     law contract school student teacher exam math language french spanish german grammar \
     word sentence translate summary article paper research study theory method system \
     network security password linux docker kubernetes postgres redis cache queue message \
     event stream loop vector matrix graph tree node edge path route";

/// [`HEAD`]'s words.
fn head() -> Vec<&'static str> {
    HEAD.split_whitespace().collect()
}

/// Syllables of the made-up words.
const SYLLABLES: [&str; 20] = [
    "ka", "lo", "mi", "ne", "ru", "ta", "vo", "shi", "pe", "da", "go", "zu", "re", "fa", "li",
    "bo", "sa", "ki", "mo", "tu",
];
/// Zipf ranks run from 1 to this.
const VOCABULARY: u32 = 20_000;

/// The word of Zipf rank `r`, as the seeding SQL spells it.
fn word(r: u32) -> String {
    if let Some(w) = usize::try_from(r)
        .ok()
        .and_then(|r| head().get(r.wrapping_sub(1)).copied())
    {
        return w.to_owned();
    }
    let s = |i: u32| SYLLABLES[usize::try_from(i % 20).unwrap_or(0)];
    let mut w = format!("{}{}{}", s(r), s(r / 20), s(r / 400));
    if r >= 8_000 {
        w.push_str(s(r / 8_000));
    }
    w
}

fn sql_array(words: &[&str]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    format!("ARRAY[{}]::text[]", quoted.join(","))
}

/// `len` words drawn with P(rank r) ∝ ln((r + 1) / r), about 1/r: Zipf's law with s = 1.
fn words_function() -> String {
    format!(
        "CREATE FUNCTION pg_temp.words(len int) RETURNS text LANGUAGE sql VOLATILE AS $$ \
             SELECT string_agg(CASE WHEN r <= {head_len} THEN ({head})[r] \
                 ELSE s[r % 20 + 1] || s[(r / 20) % 20 + 1] || s[(r / 400) % 20 + 1] \
                      || CASE WHEN r >= 8000 THEN s[(r / 8000) % 20 + 1] ELSE '' END END, ' ') \
             FROM (SELECT {syllables} AS s) AS syllables, \
                  (SELECT floor(exp(random() * ln({VOCABULARY})))::int AS r \
                   FROM generate_series(1, len)) AS ranks \
         $$",
        head_len = head().len(),
        head = sql_array(&head()),
        syllables = sql_array(&SYLLABLES),
    )
}

async fn exec(db: &DatabaseConnection, sql: &str) -> anyhow::Result<()> {
    db.execute_unprepared(sql).await?;
    Ok(())
}

async fn strings(db: &DatabaseConnection, sql: &str) -> anyhow::Result<Vec<String>> {
    let rows = db
        .query_all_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await?;
    rows.iter()
        .map(|r| Ok(r.try_get_by_index::<String>(0)?))
        .collect()
}

/// Users, chats and messages; returns the searching user. One session, seeded, so the same
/// arguments make the same text.
async fn seed(db: &DatabaseConnection, args: &SearchArgs) -> anyhow::Result<Uuid> {
    let target = Uuid::now_v7();
    exec(db, "SELECT setseed(0.19)").await?;
    exec(db, &words_function()).await?;
    exec(
        db,
        &format!(
            "INSERT INTO users (id, email, password_hash) \
             SELECT CASE WHEN n = 0 THEN '{target}'::uuid ELSE gen_random_uuid() END, \
                    'bench' || n || '@example.com', 'x' \
             FROM generate_series(0, {}) AS n",
            args.noise_users
        ),
    )
    .await?;
    // Chats over the past year; each user's are spread alike.
    exec(
        db,
        &format!(
            "INSERT INTO chats (id, user_id, title, created_at) \
             SELECT gen_random_uuid(), u.id, pg_temp.words(2 + (random() * 4)::int), \
                    now() - random() * interval '365 days' \
             FROM users u, generate_series(1, CASE WHEN u.id = '{target}' THEN {} ELSE {} END)",
            args.chats, args.noise_chats
        ),
    )
    .await?;
    // A user's question of 4–34 words, then a reply of 40–400.
    exec(
        db,
        &format!(
            "INSERT INTO messages (id, chat_id, role, content, status, created_at, completed_at) \
             SELECT gen_random_uuid(), c.id, \
                    CASE WHEN i % 2 = 1 THEN 'user' ELSE 'assistant' END, \
                    pg_temp.words(CASE WHEN i % 2 = 1 THEN 4 + (random() * 30)::int \
                                       ELSE 40 + (random() * 360)::int END), \
                    'completed', c.created_at + i * interval '1 minute', \
                    c.created_at + i * interval '1 minute' \
             FROM chats c, generate_series(1, {}) AS i",
            args.messages
        ),
    )
    .await?;
    exec(db, "VACUUM ANALYZE").await?;
    Ok(target)
}

/// A small deterministic generator (xorshift64*): the same queries every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + u32::try_from(self.next() % u64::from(hi - lo)).unwrap_or(0)
    }

    fn pick<'a>(&mut self, xs: &'a [String]) -> &'a str {
        let i = usize::try_from(self.next() % xs.len().max(1) as u64).unwrap_or(0);
        xs.get(i).map_or("", String::as_str)
    }
}

/// The kinds of query, with how many of every 100 are of each.
const KINDS: &[(&str, u32)] = &[
    ("rare word", 25),
    ("mid word", 15),
    ("common word", 10),
    ("two mid words", 15),
    ("phrase", 15),
    ("rare or rare", 10),
    ("mid -rare", 5),
    ("title word", 5),
];

fn query(kind: &str, rng: &mut Rng, phrases: &[String], title_words: &[String]) -> String {
    let head = u32::try_from(head().len()).unwrap_or(1);
    let rare = |rng: &mut Rng| word(rng.range(1_000, VOCABULARY));
    let mid = |rng: &mut Rng| word(rng.range(40, head + 1));
    match kind {
        "rare word" => rare(rng),
        "mid word" => mid(rng),
        "common word" => word(rng.range(1, 40)),
        "two mid words" => format!("{} {}", mid(rng), mid(rng)),
        "phrase" => format!("\"{}\"", rng.pick(phrases)),
        "rare or rare" => format!("{} or {}", rare(rng), rare(rng)),
        "mid -rare" => format!("{} -{}", mid(rng), rare(rng)),
        _ => rng.pick(title_words).to_owned(),
    }
}

/// Two adjacent words of each of some of the user's messages, and words of their titles.
async fn samples(
    db: &DatabaseConnection,
    user: Uuid,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let phrases = strings(
        db,
        &format!(
            "SELECT w[i] || ' ' || w[i + 1] FROM ( \
                 SELECT w, 1 + (random() * (array_length(w, 1) - 2))::int AS i FROM ( \
                     SELECT string_to_array(m.content, ' ') AS w FROM messages m \
                     JOIN chats c ON c.id = m.chat_id WHERE c.user_id = '{user}' \
                     ORDER BY random() LIMIT 200) AS picked \
                 WHERE array_length(w, 1) > 2) AS pairs"
        ),
    )
    .await?;
    let title_words = strings(
        db,
        &format!(
            "SELECT (string_to_array(title, ' '))[1] FROM chats \
             WHERE user_id = '{user}' ORDER BY random() LIMIT 200"
        ),
    )
    .await?;
    Ok((phrases, title_words))
}

#[derive(Default)]
struct Tally {
    all: Option<Histogram<u64>>,
    kinds: BTreeMap<String, Histogram<u64>>,
    newest: usize,
    items: usize,
    searches: usize,
    /// (time, kind, query, unranked) of every search.
    each: Vec<(Duration, String, String, bool)>,
}

impl Tally {
    fn record(
        &mut self,
        (kind, q): (&str, &str),
        took: Duration,
        items: usize,
        newest: bool,
    ) -> anyhow::Result<()> {
        if self.all.is_none() {
            self.all = Some(crate::report::histogram()?);
        }
        if let Some(h) = self.all.as_mut() {
            crate::report::record(h, took);
        }
        if !self.kinds.contains_key(kind) {
            self.kinds
                .insert(kind.to_owned(), crate::report::histogram()?);
        }
        if let Some(h) = self.kinds.get_mut(kind) {
            crate::report::record(h, took);
        }
        self.newest += usize::from(newest);
        self.items += items;
        self.searches += 1;
        self.each
            .push((took, kind.to_owned(), q.to_owned(), newest));
        Ok(())
    }
}

/// Runs every query (and, for every tenth, its second page), `concurrency` at once.
async fn run_queries(
    store: &Store,
    user: Uuid,
    queries: Arc<Vec<(String, String)>>,
    concurrency: usize,
    limit: u64,
) -> anyhow::Result<Tally> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (store, queries, next) = (store.clone(), queries.clone(), next.clone());
        tasks.spawn(async move {
            let mut tally = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((kind, q)) = queries.get(i) else {
                    break;
                };
                let first = SearchRequest { after: None, limit };
                let started = Instant::now();
                let page = store.search_chats(user, q, first).await?;
                tally.record(
                    (kind, q),
                    started.elapsed(),
                    page.items.len(),
                    page.order == SearchOrder::Newest,
                )?;
                if let (0, Some(after)) = (i % 10, page.next) {
                    let second = SearchRequest {
                        after: Some(after),
                        limit,
                    };
                    let started = Instant::now();
                    let page = store.search_chats(user, q, second).await?;
                    tally.record(
                        ("second page", q),
                        started.elapsed(),
                        page.items.len(),
                        page.order == SearchOrder::Newest,
                    )?;
                }
            }
            anyhow::Ok(tally)
        });
    }
    let mut total = Tally::default();
    while let Some(done) = tasks.join_next().await {
        let tally = done??;
        if let Some(h) = tally.all {
            match total.all.as_mut() {
                Some(t) => t.add(h)?,
                None => total.all = Some(h),
            }
        }
        for (kind, h) in tally.kinds {
            match total.kinds.get_mut(&kind) {
                Some(t) => t.add(h)?,
                None => {
                    total.kinds.insert(kind, h);
                }
            }
        }
        total.newest += tally.newest;
        total.items += tally.items;
        total.searches += tally.searches;
        total.each.extend(tally.each);
    }
    Ok(total)
}

async fn sizes(db: &DatabaseConnection) -> anyhow::Result<Value> {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT (SELECT count(*) FROM messages) AS messages, \
                    pg_relation_size('messages') AS heap, \
                    pg_relation_size((SELECT reltoastrelid FROM pg_class \
                                      WHERE relname = 'messages')) AS toast, \
                    pg_relation_size('messages_search') AS messages_search",
        ))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no sizes"))?;
    let mib = |col: &str| -> anyhow::Result<f64> {
        Ok((row.try_get::<i64>("", col)? as f64 / 1_048_576.0 * 10.0).round() / 10.0)
    };
    Ok(json!({
        "messages": row.try_get::<i64>("", "messages")?,
        "heap_mib": mib("heap")?,
        "toast_mib": mib("toast")?,
        "messages_search_mib": mib("messages_search")?,
    }))
}

pub async fn run(args: SearchArgs) -> anyhow::Result<()> {
    let admin = Database::connect(args.admin_url.as_str()).await?;
    let name = format!(
        "sluice_bench_search_{}",
        &Uuid::new_v4().simple().to_string()[..8]
    );
    exec(&admin, &format!("CREATE DATABASE {name}")).await?;
    let server = args
        .admin_url
        .rsplit_once('/')
        .map_or(args.admin_url.as_str(), |(s, _)| s);
    let url = format!("{server}/{name}");
    let outcome = measure(&args, &url).await;
    if args.keep {
        eprintln!("kept the database {url}");
    } else {
        exec(
            &admin,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        )
        .await?;
    }
    admin.close().await?;
    let result = outcome?;
    if args.json {
        println!("{result}");
    }
    Ok(())
}

async fn measure(args: &SearchArgs, url: &str) -> anyhow::Result<Value> {
    Store::migrate(url).await?;
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(1)
        .min_connections(1)
        .sqlx_logging(false);
    let db = Database::connect(options).await?;
    let started = Instant::now();
    let user = seed(&db, args).await?;
    let seeded_s = started.elapsed().as_secs_f64();
    let sizes = sizes(&db).await?;
    let (phrases, title_words) = samples(&db, user).await?;
    let small = strings(
        &db,
        &format!("SELECT user_id::text FROM chats WHERE user_id <> '{user}' LIMIT 1"),
    )
    .await?
    .first()
    .and_then(|id| Uuid::parse_str(id).ok());
    db.close().await?;
    eprintln!("seeded in {seeded_s:.0} s: {sizes}");

    let mut rng = Rng(0x0051_ce5e_a2c4);
    let weights: u32 = KINDS.iter().map(|(_, w)| w).sum();
    let mut make = |n: usize| -> Vec<(String, String)> {
        (0..n)
            .map(|_| {
                let mut roll = rng.range(0, weights);
                let kind = KINDS
                    .iter()
                    .find(|(_, w)| {
                        let hit = roll < *w;
                        roll = roll.saturating_sub(*w);
                        hit
                    })
                    .map_or("rare word", |(k, _)| k);
                (
                    kind.to_owned(),
                    query(kind, &mut rng, &phrases, &title_words),
                )
            })
            .collect()
    };
    let warm_up = Arc::new(make(50));
    let queries = Arc::new(make(args.queries));

    let store = Store::connect(url, u32::try_from(args.concurrency).unwrap_or(1) + 1).await?;
    run_queries(&store, user, warm_up, args.concurrency, args.limit).await?;
    let started = Instant::now();
    let tally = run_queries(&store, user, queries.clone(), args.concurrency, args.limit).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let small_tally = match small {
        Some(small) if args.small_queries > 0 => {
            let few = Arc::new(queries.iter().take(args.small_queries).cloned().collect());
            Some(run_queries(&store, small, few, args.concurrency, args.limit).await?)
        }
        _ => None,
    };
    store.close().await?;

    let all = tally.all.ok_or_else(|| anyhow::anyhow!("no searches"))?;
    let mut summary = format!(
        "search: {} chats × {} messages (+ {} users × {} chats of noise), {} searches \
         ({} at once) in {elapsed:.1} s\n  all: {}\n",
        args.chats,
        args.messages,
        args.noise_users,
        args.noise_chats,
        tally.searches,
        args.concurrency,
        crate::report::latency_line(&all),
    );
    let mut kinds = serde_json::Map::new();
    for (kind, h) in &tally.kinds {
        summary.push_str(&format!("  {kind}: {}\n", crate::report::latency_line(h)));
        kinds.insert(kind.clone(), crate::report::latency_json(h));
    }
    summary.push_str(&format!(
        "  unranked (newest first): {} of {}; {:.1} chats a page on average",
        tally.newest,
        tally.searches,
        tally.items as f64 / tally.searches.max(1) as f64
    ));
    let small_latency = match small_tally.as_ref().and_then(|t| t.all.as_ref()) {
        Some(h) => {
            summary.push_str(&format!(
                "\n  a user with {} chats, the first {} queries: {}",
                args.noise_chats,
                args.small_queries,
                crate::report::latency_line(h)
            ));
            crate::report::latency_json(h)
        }
        None => Value::Null,
    };
    let mut each = tally.each;
    each.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (took, kind, q, newest) in each.iter().take(args.slowest) {
        let order = if *newest { "newest" } else { "rank" };
        summary.push_str(&format!(
            "\n  slow: {:.2} ms  {kind}  {q}  ({order})",
            took.as_secs_f64() * 1000.0
        ));
    }
    if args.json {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    Ok(json!({
        "chats": args.chats,
        "messages_per_chat": args.messages,
        "noise_users": args.noise_users,
        "noise_chats": args.noise_chats,
        "concurrency": args.concurrency,
        "seed_s": seeded_s,
        "sizes": sizes,
        "latency": crate::report::latency_json(&all),
        "kinds": kinds,
        "unranked": tally.newest,
        "searches": tally.searches,
        "small_user_latency": small_latency,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_of_ranks() {
        assert_eq!(word(1), "the");
        assert_eq!(word(u32::try_from(head().len()).unwrap_or(0)), "route");
        assert_eq!(word(820), "kalomi");
        assert_eq!(word(8_021), "lolokalo");
    }
}

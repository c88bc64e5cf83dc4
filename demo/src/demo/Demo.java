package demo;

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpHandler;
import com.sun.net.httpserver.HttpServer;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;

/**
 * Stand-in for a Spring Boot service, used by the blue-green deploy tests and demo.
 * Only JDK classes, so it runs on the jlink'ed scratch base image (docker/jre).
 *
 * Environment:
 *   PORT               listen port (default 8080)
 *   APP_VERSION        echoed by GET /
 *   APP_COLOR          echoed by GET /
 *   STARTUP_DELAY_MS   sleep before binding the port, mimics a slow Spring Boot start
 *   HEALTH_FAIL=1      /actuator/health answers 503 forever, / still works
 *   HEALTH_FAIL_AFTER  seconds: once this long has passed since health first answered 200,
 *                      /actuator/health answers 503 (a release that breaks after the switch)
 *   EXIT_AFTER_HEALTHY seconds: once this long has passed since health first answered 200, the
 *                      process prints an error to stderr and halts with status 1, no drain (a
 *                      release that dies right after it is healthy)
 *   FAIL_RATE          0..1: this share of requests to other paths than the health endpoint is
 *                      answered 500 (deterministically: every request whose running count
 *                      crosses the next multiple of 1/FAIL_RATE), health stays fine
 *   CRASH_ON_START=1   print an error to stderr and exit(1) immediately
 *   GRACE_SECONDS      max seconds SIGTERM waits for in-flight requests (default 10)
 *   THREADS            handler threads (default 32)
 *   DATABASE_URL       the release's database, a JDBC URL (default jdbc:sqlite:/data/app.db); used
 *                      only with REQUIRE_SCHEMA, and only where java.sql and a driver are there
 *                      (the image built on pipeline/jre-sql:17 from build/libs/app-sqlite.jar)
 *   REQUIRE_SCHEMA     the schema version this release needs (default: none needed); health
 *                      answers 503 while the database's schema_version is older than that
 *
 * Endpoints: GET /, GET /actuator/health, GET /slow?ms=N
 *
 * `migrate [--sleep-ms N] [--fail] [--hang]` (the release phase's command: the image's entry
 * point kept) does not serve: in one transaction holding the database's write lock, it runs the
 * expand steps (Database.STEPS) that bring the schema from its version up to REQUIRE_SCHEMA,
 * recording each in the schema_version table (the older release, needing less, keeps working),
 * prints what it does, commits and exits 0. --sleep-ms: the transaction takes that long more
 * before it commits; --fail: it also runs a statement SQLite refuses, rolls back (nothing
 * changed) and exits 3; --hang: it never commits nor ends.
 */
public final class Demo {

    /** Requests currently inside a handler; the shutdown hook drains on this. */
    private static final AtomicInteger IN_FLIGHT = new AtomicInteger();
    /** Set once SIGTERM arrives: responses then carry "Connection: close". */
    private static final AtomicBoolean STOPPING = new AtomicBoolean();
    /** Requests to non-health paths so far, for FAIL_RATE. */
    private static final AtomicLong SERVED = new AtomicLong();
    /** When health first answered 200 (System.nanoTime()), 0 until then; for HEALTH_FAIL_AFTER. */
    private static final AtomicLong FIRST_HEALTHY = new AtomicLong();
    /** Where DATABASE_URL points when it is not set: a SQLite file on the release's volume. */
    private static final String DEFAULT_DATABASE_URL = "jdbc:sqlite:/data/app.db";
    /** Set once the schema version could not be read, so the cause is printed once. */
    private static final AtomicBoolean SCHEMA_UNREADABLE = new AtomicBoolean();
    /** Set by the first 200 health answer, for EXIT_AFTER_HEALTHY. */
    private static final AtomicBoolean EXIT_SCHEDULED = new AtomicBoolean();

    private Demo() {
    }

    public static void main(String[] args) throws Exception {
        if (args.length > 0 && "migrate".equals(args[0])) {
            System.exit(migrate(args));
        }
        String version = env("APP_VERSION", "dev");
        String color = env("APP_COLOR", "none");
        int port = intEnv("PORT", 8080);
        long startupDelayMs = intEnv("STARTUP_DELAY_MS", 0);
        boolean healthFail = "1".equals(System.getenv("HEALTH_FAIL"));
        int graceSeconds = intEnv("GRACE_SECONDS", 10);
        int threads = intEnv("THREADS", 32);
        double failRate = Math.max(0.0, Math.min(1.0, doubleEnv("FAIL_RATE", 0.0)));
        double healthFailAfter = doubleEnv("HEALTH_FAIL_AFTER", -1.0);
        double exitAfterHealthy = doubleEnv("EXIT_AFTER_HEALTHY", -1.0);

        if ("1".equals(System.getenv("CRASH_ON_START"))) {
            System.err.println("demo " + version + ": CRASH_ON_START=1, exiting with status 1");
            System.exit(1);
        }

        // Without TCP_NODELAY the JDK HttpServer answers keep-alive requests ~40 ms late
        // (Nagle + delayed ACK). The Dockerfile passes the flag too; setting it here covers
        // `java -jar` runs outside the image. Must happen before the server classes load.
        if (System.getProperty("sun.net.httpserver.nodelay") == null) {
            System.setProperty("sun.net.httpserver.nodelay", "true");
        }

        if (startupDelayMs > 0) {
            Thread.sleep(startupDelayMs);
        }

        byte[] rootBody = ("version=" + version + " color=" + color + "\n").getBytes(StandardCharsets.UTF_8);
        byte[] up = "{\"status\":\"UP\"}".getBytes(StandardCharsets.UTF_8);
        byte[] down = "{\"status\":\"DOWN\"}".getBytes(StandardCharsets.UTF_8);

        HttpServer server = HttpServer.create(new InetSocketAddress(port), 1024);
        ExecutorService pool = Executors.newFixedThreadPool(threads);
        server.setExecutor(pool);

        // HttpServer contexts match by prefix, so "/" sees every path not claimed below.
        byte[] injected = "injected failure (FAIL_RATE)\n".getBytes(StandardCharsets.UTF_8);
        server.createContext("/", counted(ex -> {
            if (failRate > 0 && injectFailure(failRate)) {
                send(ex, 500, "text/plain; charset=utf-8", injected);
            } else if (!"/".equals(ex.getRequestURI().getPath())) {
                send(ex, 404, "text/plain; charset=utf-8", "not found\n".getBytes(StandardCharsets.UTF_8));
            } else {
                send(ex, 200, "text/plain; charset=utf-8", rootBody);
            }
        }));
        int requiredSchema = intEnv("REQUIRE_SCHEMA", 0);
        String databaseUrl = env("DATABASE_URL", DEFAULT_DATABASE_URL);
        server.createContext("/actuator/health", counted(ex -> {
            int schema = requiredSchema > 0 ? schemaVersion(databaseUrl) : 0;
            if (schema < requiredSchema) {
                send(ex, 503, "application/json", ("{\"status\":\"DOWN\",\"schema\":" + schema + ",\"required\":"
                        + requiredSchema + "}").getBytes(StandardCharsets.UTF_8));
            } else if (healthFail || healthExpired(healthFailAfter)) {
                send(ex, 503, "application/json", down);
            } else {
                send(ex, 200, "application/json", up);
                if (exitAfterHealthy >= 0 && EXIT_SCHEDULED.compareAndSet(false, true)) {
                    exitLater(version, exitAfterHealthy);
                }
            }
        }));
        server.createContext("/slow", counted(ex -> {
            if (failRate > 0 && injectFailure(failRate)) {
                send(ex, 500, "text/plain; charset=utf-8", injected);
                return;
            }
            long ms = queryLong(ex.getRequestURI(), "ms", 1000);
            try {
                Thread.sleep(Math.max(0, Math.min(ms, 600_000)));
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
            send(ex, 200, "text/plain; charset=utf-8", ("slept " + ms + "ms\n").getBytes(StandardCharsets.UTF_8));
        }));

        Runtime.getRuntime().addShutdownHook(new Thread(() -> drain(server, pool, graceSeconds), "drain"));

        server.start();
        System.out.println("demo " + version + " listening on " + port);
        System.out.flush();
    }

    /**
     * SIGTERM: close the listening socket, let in-flight requests finish (at most
     * graceSeconds), then close the remaining connections.
     *
     * HttpServer.stop(delay) alone is not enough on JDK 17: it closes the listener at once
     * but, when no exchange is in progress, it still sleeps the full delay (JDK-8304065),
     * which would turn every idle `docker stop` into a 10 s wait. So stop(grace) runs in
     * its own thread and this hook ends it early with stop(0) once our own counter of
     * in-flight requests has stayed at zero for a short while.
     */
    private static void drain(HttpServer server, ExecutorService pool, int graceSeconds) {
        STOPPING.set(true);
        long t0 = System.nanoTime();
        Thread stopper = new Thread(() -> server.stop(graceSeconds), "stopper");
        stopper.start();
        long deadline = t0 + TimeUnit.SECONDS.toNanos(graceSeconds);
        int quietPolls = 0;
        try {
            // Wait for two consecutive zero readings 50 ms apart: a request whose headers
            // were being read when the listener closed gets counted within that window.
            while (System.nanoTime() < deadline && stopper.isAlive()) {
                quietPolls = IN_FLIGHT.get() == 0 ? quietPolls + 1 : 0;
                if (quietPolls >= 2) {
                    break;
                }
                Thread.sleep(50);
            }
            if (stopper.isAlive()) {
                server.stop(0);
            }
            stopper.join(2000);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        pool.shutdownNow();
        long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
        System.out.println("demo stopped after " + ms + " ms drain, in-flight left: " + IN_FLIGHT.get());
        System.out.flush();
    }

    /**
     * The schema version of the database, 0 while it has none (or no file yet); -1 when it cannot
     * be read, the cause printed once (no java.sql or driver in this image, a bad URL).
     */
    private static int schemaVersion(String url) {
        try {
            return Database.version(url);
        } catch (RuntimeException | LinkageError e) {
            if (SCHEMA_UNREADABLE.compareAndSet(false, true)) {
                System.err.println("demo: cannot read the schema version from " + url + ": " + e);
            }
            return -1;
        }
    }

    /** `migrate`: see the class comment; the exit code. */
    private static int migrate(String[] args) throws InterruptedException {
        java.util.List<String> options = java.util.Arrays.asList(args);
        int sleepAt = options.indexOf("--sleep-ms");
        long sleepMs = sleepAt >= 0 && sleepAt + 1 < args.length ? Long.parseLong(args[sleepAt + 1]) : 0;
        String url = env("DATABASE_URL", DEFAULT_DATABASE_URL);
        try {
            return Database.migrate(url, env("APP_VERSION", "dev"), env("APP_COLOR", "none"),
                    intEnv("REQUIRE_SCHEMA", 0), sleepMs, options.contains("--fail"), options.contains("--hang"));
        } catch (LinkageError e) {
            System.err.println("migrate: no JDBC in this image (build on pipeline/jre-sql:17 with app-sqlite.jar): " + e);
            return 2;
        }
    }

    /**
     * The database through JDBC. Every use of java.sql stays inside this class, which is loaded only
     * when REQUIRE_SCHEMA or `migrate` needs it: Demo itself still runs on a JRE without java.sql.
     */
    static final class Database {
        /** The expand steps, in order: step N takes the schema from version N-1 to N. */
        static final String[] STEPS = {
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL)",
            "ALTER TABLE orders ADD COLUMN note TEXT",
            "CREATE INDEX orders_item ON orders (item)",
        };
        /** What --fail also runs: SQLite's ALTER TABLE cannot add a UNIQUE column. */
        static final String REFUSED = "ALTER TABLE orders ADD COLUMN ref TEXT UNIQUE";
        /** SQLITE_CANTOPEN: opened read-only, a database file that is not there yet. */
        private static final int CANTOPEN = 14;

        private Database() {
        }

        /** The schema version, read-only (health never creates the file); 0 with no file or table yet. */
        static int version(String url) {
            java.util.Properties readOnly = new java.util.Properties();
            readOnly.setProperty("open_mode", "1"); // SQLITE_OPEN_READONLY
            try (java.sql.Connection db = java.sql.DriverManager.getConnection(url, readOnly);
                 java.sql.Statement sql = db.createStatement()) {
                return current(sql);
            } catch (java.sql.SQLException e) {
                if (e.getErrorCode() == CANTOPEN) {
                    return 0;
                }
                throw new IllegalStateException(e.getMessage(), e);
            }
        }

        private static int current(java.sql.Statement sql) throws java.sql.SQLException {
            try (java.sql.ResultSet table = sql.executeQuery(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'")) {
                if (!table.next()) {
                    return 0;
                }
            }
            try (java.sql.ResultSet row = sql.executeQuery("SELECT COALESCE(MAX(version), 0) FROM schema_version")) {
                row.next();
                return row.getInt(1);
            }
        }

        static int migrate(String url, String release, String color, int target, long sleepMs, boolean fail,
                           boolean hang) throws InterruptedException {
            if (target > STEPS.length) {
                System.err.println("migrate: no migration to schema " + target + " (this release knows 1.." + STEPS.length
                        + ")");
                return 4;
            }
            java.util.Properties immediate = new java.util.Properties();
            immediate.setProperty("transaction_mode", "IMMEDIATE"); // BEGIN IMMEDIATE: the write lock up front
            String statement = "BEGIN";
            try (java.sql.Connection db = java.sql.DriverManager.getConnection(url, immediate)) {
                db.setAutoCommit(false);
                try (java.sql.Statement sql = db.createStatement()) {
                    int from = current(sql);
                    System.out.println("migrate " + release + " (" + color + "): schema " + from
                            + ", this release needs " + target);
                    System.out.flush();
                    statement = "CREATE TABLE schema_version";
                    sql.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                            + "release TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)");
                    for (int step = from + 1; step <= target; step++) {
                        statement = STEPS[step - 1];
                        sql.execute(statement);
                        try (java.sql.PreparedStatement record = db.prepareStatement(
                                "INSERT INTO schema_version (version, release) VALUES (?, ?)")) {
                            record.setInt(1, step);
                            record.setString(2, release);
                            record.executeUpdate();
                        }
                        System.out.println("migrate: schema " + (step - 1) + " -> " + step + ": " + statement);
                    }
                    if (fail) {
                        statement = REFUSED;
                        sql.execute(statement);
                    }
                    if (sleepMs > 0) {
                        Thread.sleep(sleepMs);
                    }
                    if (hang) {
                        System.out.println("migrate: holding the write lock, never committing (--hang)");
                        System.out.flush();
                        Thread.sleep(Long.MAX_VALUE);
                    }
                    statement = "COMMIT";
                    db.commit();
                    System.out.println("migrate: schema at " + current(sql));
                    return 0;
                } catch (java.sql.SQLException e) {
                    db.rollback();
                    throw e;
                }
            } catch (java.sql.SQLException e) {
                System.err.println("migrate: " + statement + " failed, rolled back: " + e.getMessage()
                        + " (connected with DB_PASSWORD=" + env("DB_PASSWORD", "") + ")");
                return 3;
            }
        }
    }

    /** EXIT_AFTER_HEALTHY: halt with status 1 that many seconds from now (no shutdown hook: a crash). */
    private static void exitLater(String version, double seconds) {
        Thread killer = new Thread(() -> {
            try {
                Thread.sleep((long) (seconds * 1000));
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
            System.err.println("demo " + version + ": EXIT_AFTER_HEALTHY=" + seconds + ", exiting with status 1");
            System.err.flush();
            Runtime.getRuntime().halt(1);
        }, "exit-after-healthy");
        killer.setDaemon(true);
        killer.start();
    }

    /** FAIL_RATE: true for the requests whose count crosses the next multiple of 1/rate. */
    private static boolean injectFailure(double rate) {
        long n = SERVED.incrementAndGet();
        return Math.floor(n * rate) > Math.floor((n - 1) * rate);
    }

    /** HEALTH_FAIL_AFTER: notes the first healthy answer; true once the given seconds passed since. */
    private static boolean healthExpired(double afterSeconds) {
        if (afterSeconds < 0) {
            return false;
        }
        long now = System.nanoTime();
        FIRST_HEALTHY.compareAndSet(0, now);
        return now - FIRST_HEALTHY.get() >= (long) (afterSeconds * 1e9);
    }

    /** Wraps a handler so the shutdown hook can see how many requests are running. */
    private static HttpHandler counted(HttpHandler h) {
        return ex -> {
            IN_FLIGHT.incrementAndGet();
            try {
                drainBody(ex);
                h.handle(ex);
            } finally {
                ex.close();
                IN_FLIGHT.decrementAndGet();
            }
        };
    }

    private static void send(HttpExchange ex, int status, String contentType, byte[] body) throws IOException {
        ex.getResponseHeaders().set("Content-Type", contentType);
        if (STOPPING.get()) {
            // Tell keep-alive clients (nginx upstream pools) not to reuse this connection.
            ex.getResponseHeaders().set("Connection", "close");
        }
        if ("HEAD".equals(ex.getRequestMethod())) {
            ex.sendResponseHeaders(status, -1);
            return;
        }
        ex.sendResponseHeaders(status, body.length);
        try (OutputStream os = ex.getResponseBody()) {
            os.write(body);
        }
    }

    /** Read and discard any request body so the connection can be reused. */
    private static void drainBody(HttpExchange ex) throws IOException {
        try (InputStream in = ex.getRequestBody()) {
            byte[] buf = new byte[8192];
            while (in.read(buf) != -1) {
                // discard
            }
        }
    }

    private static long queryLong(URI uri, String name, long dflt) {
        String q = uri.getRawQuery();
        if (q == null) {
            return dflt;
        }
        for (String kv : q.split("&")) {
            int eq = kv.indexOf('=');
            if (eq > 0 && kv.substring(0, eq).equals(name)) {
                try {
                    return Long.parseLong(kv.substring(eq + 1));
                } catch (NumberFormatException e) {
                    return dflt;
                }
            }
        }
        return dflt;
    }

    private static String env(String name, String dflt) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? dflt : v;
    }

    private static double doubleEnv(String name, double dflt) {
        String v = System.getenv(name);
        if (v == null || v.isEmpty()) {
            return dflt;
        }
        try {
            return Double.parseDouble(v.trim());
        } catch (NumberFormatException e) {
            System.err.println("demo: ignoring bad " + name + "=" + v);
            return dflt;
        }
    }

    private static int intEnv(String name, int dflt) {
        String v = System.getenv(name);
        if (v == null || v.isEmpty()) {
            return dflt;
        }
        try {
            return Integer.parseInt(v.trim());
        } catch (NumberFormatException e) {
            System.err.println("demo: ignoring bad " + name + "=" + v);
            return dflt;
        }
    }
}

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
 *   SCHEMA_FILE        a small file-based "database": the schema version it is at (a number);
 *                      with REQUIRE_SCHEMA, health answers 503 while it is older than that
 *   REQUIRE_SCHEMA     the schema version this release needs (default: none needed)
 *
 * Endpoints: GET /, GET /actuator/health, GET /slow?ms=N
 *
 * `migrate [--sleep-ms N] [--fail] [--hang]` (the release phase's command: the image's entry
 * point kept) does not serve: it brings SCHEMA_FILE up to REQUIRE_SCHEMA (an expand step: the
 * older release, needing less, keeps working), printing what it does, and exits 0. --sleep-ms:
 * takes that long first; --fail: exits 3 without changing anything; --hang: never ends.
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
        server.createContext("/actuator/health", counted(ex -> {
            int schema = requiredSchema > 0 ? schemaVersion() : 0;
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

    /** The schema version SCHEMA_FILE holds; 0 when there is none yet (or it cannot be read). */
    private static int schemaVersion() {
        try {
            return Integer.parseInt(new String(java.nio.file.Files.readAllBytes(schemaFile()),
                    StandardCharsets.UTF_8).trim());
        } catch (IOException | NumberFormatException e) {
            return 0;
        }
    }

    private static java.nio.file.Path schemaFile() {
        return java.nio.file.Paths.get(env("SCHEMA_FILE", "/data/schema"));
    }

    /** `migrate`: SCHEMA_FILE up to REQUIRE_SCHEMA, written atomically (temp file + rename). */
    private static int migrate(String[] args) throws Exception {
        String version = env("APP_VERSION", "dev");
        int target = intEnv("REQUIRE_SCHEMA", 0);
        int current = schemaVersion();
        java.util.List<String> options = java.util.Arrays.asList(args);
        System.out.println("migrate " + version + " (" + env("APP_COLOR", "none") + "): schema " + current
                + ", this release needs " + target);
        System.out.flush();
        int sleepAt = options.indexOf("--sleep-ms");
        if (sleepAt >= 0 && sleepAt + 1 < args.length) {
            Thread.sleep(Long.parseLong(args[sleepAt + 1]));
        }
        if (options.contains("--hang")) {
            System.out.println("migrate: waiting for a lock that is never released");
            System.out.flush();
            Thread.sleep(Long.MAX_VALUE);
        }
        if (options.contains("--fail")) {
            System.err.println("migrate: ALTER TABLE orders ADD COLUMN note failed: database is locked"
                    + " (connected with DB_PASSWORD=" + env("DB_PASSWORD", "") + ")");
            return 3;
        }
        for (int step = current + 1; step <= target; step++) {
            java.nio.file.Path file = schemaFile();
            java.nio.file.Path tmp = file.resolveSibling(file.getFileName() + ".tmp");
            java.nio.file.Files.write(tmp, (step + "\n").getBytes(StandardCharsets.UTF_8));
            java.nio.file.Files.move(tmp, file, java.nio.file.StandardCopyOption.ATOMIC_MOVE);
            System.out.println("migrate: schema " + (step - 1) + " -> " + step);
        }
        System.out.println("migrate: schema at " + schemaVersion());
        return 0;
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

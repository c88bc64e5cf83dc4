package launcher;

import java.io.InputStream;
import java.net.URL;
import java.net.URLClassLoader;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.jar.JarFile;
import java.util.jar.Manifest;

/**
 * A small stand-in for Spring Boot's JarLauncher (whose loader is not installable here), for the
 * Spring Boot-layout test service (demo/layered/build.py).
 *
 * Unpacked (an IMAGE_BUILD=layered image: `java -cp /app launcher.Launcher`): the app's classes
 * from BOOT-INF/classes and every jar in BOOT-INF/lib. As a fat jar (`java -jar app.jar`): the
 * classes from inside the jar; nested jars are not opened (the test service needs none of them
 * at run time: they are the weight a real service's dependencies have).
 */
public final class Launcher {

    private Launcher() {
    }

    public static void main(String[] args) throws Exception {
        URL where = Launcher.class.getProtectionDomain().getCodeSource().getLocation();
        Path root = Paths.get(where.toURI());
        List<URL> urls = new ArrayList<>();
        Manifest manifest;
        if (Files.isDirectory(root)) {
            urls.add(root.resolve("BOOT-INF/classes/").toUri().toURL());
            Path lib = root.resolve("BOOT-INF/lib");
            if (Files.isDirectory(lib)) {
                try (DirectoryStream<Path> jars = Files.newDirectoryStream(lib, "*.jar")) {
                    for (Path jar : jars) {
                        urls.add(jar.toUri().toURL());
                    }
                }
            }
            try (InputStream in = Files.newInputStream(root.resolve("META-INF/MANIFEST.MF"))) {
                manifest = new Manifest(in);
            }
        } else {
            urls.add(new URL("jar:" + where + "!/BOOT-INF/classes/"));
            try (JarFile jar = new JarFile(root.toFile())) {
                manifest = jar.getManifest();
            }
        }
        String start = manifest.getMainAttributes().getValue("Start-Class");
        ClassLoader loader = new URLClassLoader(urls.toArray(new URL[0]), Launcher.class.getClassLoader());
        Thread.currentThread().setContextClassLoader(loader);
        Class.forName(start, true, loader).getMethod("main", String[].class).invoke(null, (Object) args);
    }
}

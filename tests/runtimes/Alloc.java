// ~100 MiB of Java heap (byte arrays) and 20 MiB of direct ByteBuffers,
// malloc'd by the JVM for Java code. At the end, the JVM's own figures:
// `VM.native_memory summary` (run with -XX:NativeMemoryTracking=summary),
// asked in-process through the DiagnosticCommand MBean (what jcmd calls).
// Before the direct buffers, `Compiler.perfmap` writes /tmp/perf-PID.map,
// naming the interpreter and the compiled code the stacks go through.
import java.lang.management.ManagementFactory;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import javax.management.ObjectName;

public class Alloc {
    static final ArrayList<Object> KEPT = new ArrayList<>();

    static void fillHeap() {
        for (int i = 0; i < 100; i++) {
            byte[] b = new byte[1 << 20];
            for (int j = 0; j < b.length; j += 4096) {
                b[j] = (byte) i;
            }
            KEPT.add(b);
        }
    }

    static void fillDirect() {
        for (int i = 0; i < 20; i++) {
            ByteBuffer d = ByteBuffer.allocateDirect(1 << 20);
            for (int j = 0; j < d.capacity(); j += 4096) {
                d.put(j, (byte) i);
            }
            KEPT.add(d);
        }
    }

    static String diagnostic(String command, String... args) throws Exception {
        return (String) ManagementFactory.getPlatformMBeanServer().invoke(
                new ObjectName("com.sun.management:type=DiagnosticCommand"),
                command,
                new Object[] {args},
                new String[] {String[].class.getName()});
    }

    public static void main(String[] args) throws Exception {
        fillHeap();
        diagnostic("compilerPerfmap");
        fillDirect();
        System.out.println("kept " + KEPT.size());
        String nmt = diagnostic("vmNativeMemory", "summary");
        System.out.println(nmt);
        System.out.flush();
        // Exit at once, before the heap shrinks: the report shows it.
        Runtime.getRuntime().halt(0);
    }
}

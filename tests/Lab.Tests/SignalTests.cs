namespace Lab.Tests;

/// <summary>Runs alone, after the parallel classes: in the full suite on 2 busy vCPUs the daemon's
/// stop on SIGINT has taken over 20 s (alone: 1–3 s); the cause is not found yet.</summary>
[CollectionDefinition(nameof(SignalTests), DisableParallelization = true)]
public sealed class SignalTestsCollection;

[Collection(nameof(SignalTests))]
public sealed class SignalTests(ITestOutputHelper output)
{
    [KernelFact]
    public void SigintUnmountsCleanlyAndWritesBack()
    {
        using var m = new LabMount();
        File.WriteAllBytes(m.B("s.bin"), new byte[4096]);
        var r = m.Run(Repo.Python, "-c",
            $"import mmap; f=open('{m.M("s.bin")}','r+b'); s=mmap.mmap(f.fileno(),0); s[0:3]=b'INT'; print('ok')");
        EndToEndTests.AssertOk(r, output, m);
        LabMount.Signal(m.Daemon.Id, 2);
        // 60 s: in the full suite on 2 busy vCPUs the stop has taken over 20 s (alone: 3 s).
        Assert.True(m.Daemon.WaitForExit(60_000), "the daemon did not stop on SIGINT; its threads wait in: " + Wchans(m.Daemon.Id));
        Assert.Equal(0, m.Daemon.ExitCode);
        Assert.DoesNotContain(" " + m.Mount + " ", File.ReadAllText("/proc/self/mountinfo"));
        Assert.Equal("INT"u8.ToArray(), File.ReadAllBytes(m.B("s.bin"))[..3]);
    }

    static string Wchans(int pid)
    {
        try
        {
            return string.Join(", ", Directory.GetDirectories($"/proc/{pid}/task").Select(t =>
            {
                try { return File.ReadAllText(Path.Combine(t, "comm")).Trim() + ":" + File.ReadAllText(Path.Combine(t, "wchan")); }
                catch (IOException) { return "?"; }
            }));
        }
        catch (IOException e) { return e.Message; }
    }
}

using System.Runtime.InteropServices;
using Microsoft.Data.Sqlite;

namespace Lab.Swapstore.Tests;

/// <summary>A scratch directory per test, removed afterwards.</summary>
public sealed class TempDir : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("swapstore-test-").FullName;
    public string File(string name = "swap.db") => System.IO.Path.Combine(Path, name);
    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}

static partial class Pages
{
    /// <summary>Deterministic page content for (slot, generation): the kill -9 test regenerates it to compare bytes.</summary>
    public static void Fill(Span<byte> page, long slot, long gen)
    {
        ulong x = (ulong)slot * 0x9E3779B97F4A7C15UL ^ (ulong)gen * 0xD1B54A32D192ED03UL ^ 0x5DEECE66DUL;
        var words = MemoryMarshal.Cast<byte, ulong>(page);
        for (int i = 0; i < words.Length; i++)
        {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            words[i] = x;
        }
    }

    public static byte[] Make(long slot, long gen)
    {
        var p = new byte[SwapStore.PageBytes];
        Fill(p, slot, gen);
        return p;
    }

    public static byte[] Random(Random rng)
    {
        var p = new byte[SwapStore.PageBytes];
        rng.NextBytes(p);
        return p;
    }

    /// <summary>Plain SQLite on the store's file (no SwapStore code), as a person with sqlite3 would.</summary>
    public static SqliteConnection Plain(string path)
    {
        SQLitePCL.Batteries_V2.Init();
        var c = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = path, Pooling = false }.ToString());
        c.Open();
        return c;
    }

    public static object? Scalar(SqliteConnection c, string sql)
    {
        using var cmd = c.CreateCommand();
        cmd.CommandText = sql;
        return cmd.ExecuteScalar();
    }

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    public static partial int Kill(int pid, int sig);

    public const int SIGKILL = 9;
}
